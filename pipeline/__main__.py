"""`python -m imagebatch` is the same program as `imagebatch`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

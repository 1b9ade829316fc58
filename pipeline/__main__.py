"""`python -m imagebatch` is the same program as `imagebatch`."""

from __future__ import annotations

from .cli import console

if __name__ == "__main__":
    console()

"""imagebatch: bulk image generation from YAML manifests."""

from __future__ import annotations

__version__ = "0.1.0"


def version() -> str:
    """imagebatch's version: the running code's `__version__`, which a built distribution's
    metadata is made from (pyproject.toml's dynamic version)."""
    # Not importlib.metadata: its lookup reads every folder on sys.path (a fifteenth of a
    # second of CPU, in every command that records the version), and an editable install's
    # metadata keeps the version it was installed at while the code imported moves on.
    return __version__


# The providers register themselves and install their registry for the folders below them
# (planning and storage name no provider), whatever module of the package is imported first.
from . import providers as _providers  # noqa: E402, F401

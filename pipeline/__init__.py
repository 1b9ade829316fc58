"""imagebatch: bulk image generation from YAML manifests."""

from __future__ import annotations

import functools

__version__ = "0.1.0"


@functools.cache
def version() -> str:
    """imagebatch's version: the installed distribution's, else this source tree's."""
    # Looked up once a process: the lookup reads every folder on sys.path (tens of ms, twice
    # a run), and the code running is the one imported, whatever is installed since.
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("imagebatch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return __version__


# The providers register themselves and install their registry for the folders below them
# (planning and storage name no provider), whatever module of the package is imported first.
from . import providers as _providers  # noqa: E402, F401

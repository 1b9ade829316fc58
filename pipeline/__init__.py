"""imagebatch: bulk image generation from YAML manifests."""

from __future__ import annotations

__version__ = "0.1.0"

"""Shared fixtures: keep the caller's DIFFUSION_*, STABILITY_* and IMAGEBATCH_* out of every
test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see real credentials, a real URL, a shared cache or a price from the
    environment (a real IMAGEBATCH_CACHE would have tests upload to a team's bucket)."""
    for name in list(os.environ):
        if name.startswith(("DIFFUSION_", "INFERENCE_", "STABILITY_", "IMAGEBATCH_")) or \
                name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name, raising=False)

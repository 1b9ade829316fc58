"""Shared fixtures: keep the caller's DIFFUSION_* and STABILITY_* out of every test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see real credentials or a real URL from the environment."""
    for name in list(os.environ):
        if name.startswith(("DIFFUSION_", "INFERENCE_", "STABILITY_")) or \
                name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name, raising=False)

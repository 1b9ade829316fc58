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


#: Marks of the tests that take seconds each, longest kinds first: they start first, so the
#: suite does not end with one worker finishing a minute-long test while the others idle
#: (pytest-xdist's worksteal then shares out the quick tests queued behind them).
_FIRST = ("wheel", "slow", "stress", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow kinds of test first, in a stable order."""
    def rank(item: pytest.Item) -> int:
        marks = {m.name for m in item.iter_markers()}
        return next((i for i, name in enumerate(_FIRST) if name in marks), len(_FIRST))

    items.sort(key=rank)

"""Shared fixtures: keep the caller's DIFFUSION_*, STABILITY_* and IMAGEBATCH_* out of every
test."""

from __future__ import annotations

import gc
import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see real credentials, a real URL, a shared cache or a price from the
    environment (a real IMAGEBATCH_CACHE would have tests upload to a team's bucket).

    And the embedded server that `run` starts, in this process, a subprocess or under make,
    draws flat pictures (IMAGEBATCH_PLACEHOLDERS=flat): one colour of the same size, format
    and determinism, made in a thread in a small part of a landscape's CPU and with no render
    processes to start. A test that looks at what a picture shows deletes the variable."""
    for name in list(os.environ):
        if name.startswith(("DIFFUSION_", "INFERENCE_", "STABILITY_", "IMAGEBATCH_")) or \
                name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMAGEBATCH_PLACEHOLDERS", "flat")


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    """SIGINT's and SIGTERM's handlers put back after a test that changes them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def post_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The signal tests' images (post_signal_helpers.make_outputs), made once for the test
    process: each test copies them. Their modules carry `pytest.mark.together("post-signals")`
    so that one worker renders the landscapes for all of them."""
    from post_signal_helpers import make_outputs

    return make_outputs(tmp_path_factory.mktemp("post-signals"))


#: A rough cost per test from its marks (seconds on a quiet machine): what the first
#: distribution of tests over the pytest-xdist workers balances.
_COST = {"wheel": 40.0, "slow": 8.0, "stress": 5.0, "browser": 2.0}
_LIGHT = 0.2


def _cost(item: pytest.Item) -> float:
    marks = {m.name for m in item.iter_markers()}
    return max([_COST[name] for name in marks if name in _COST], default=_LIGHT)


def _unit(item: pytest.Item) -> str:
    """The tests dealt to one worker together: those sharing a fixture that costs seconds of
    CPU to make, which each worker running one of them would make again (a session or module
    fixture is per worker). The wheel tests share one build and install; the browser tests one
    chromium; a `together(NAME)` mark names any other group (a module's, with no name)."""
    if item.get_closest_marker("wheel"):
        return "wheel"
    if item.get_closest_marker("browser"):
        return "browser"
    mark = item.get_closest_marker("together")
    if mark is not None:
        return f"together:{mark.args[0] if mark.args else item.path}"
    return item.nodeid


def pytest_collection_finish(session: pytest.Session) -> None:
    """Leave what collection imported out of the garbage collector's later passes.

    A worker has imported every test module and what they import (aiohttp, Pillow, hypothesis,
    imagebatch...): hundreds of thousands of objects that live as long as the process, which
    every full collection would walk again, hundreds of times a run."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests so that pytest-xdist's first split hands every worker an even share
    of the slow ones, each worker's share first.

    worksteal gives worker i the i-th contiguous slice of the list and later moves tests
    from the end of a busy worker's queue to an idle one. In file order, one worker got
    every minute-long test and the suite ended waiting for it. Here the slow tests are dealt
    out (longest first, to the least loaded slice) and the quick ones fill each slice to
    the size xdist will cut; every worker computes the same order (xdist checks it)."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_unit(item), []).append(item)
    # a unit of several tests is dealt whole, however light each of them is
    heavy = sorted((u for u in units.values() if len(u) > 1 or _cost(u[0]) > _LIGHT),
                   key=lambda u: -sum(map(_cost, u)))
    light = [u[0] for u in units.values() if len(u) == 1 and _cost(u[0]) <= _LIGHT]
    # the slice sizes of worksteal's first split: len(pending) // workers still to serve
    sizes, left = [], len(items)
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    slices: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for unit in heavy:
        j = min(range(workers), key=lambda k: (load[k], k))
        slices[j].extend(unit)
        load[j] += sum(map(_cost, unit))
    rest = iter(light)
    for j in range(workers):
        slices[j].extend(itertools.islice(rest, max(0, sizes[j] - len(slices[j]))))
    ordered = [item for part in slices for item in part] + list(rest)
    assert len(ordered) == len(items)
    items[:] = ordered

"""Signals at seeded random moments of post-processing (thumbnails, sheets, index), over
several iterations of `run`, `sheet` and `merge`: each ends with exit 130 (or 0 when it
finished first), nothing half-written, no process left behind, and a following `sheet`
completes cleanly, also leaving nothing behind.
"""

from __future__ import annotations

import random
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from post_signal_helpers import (
    INTERRUPTED,
    N,
    Watch,
    check_nothing_half_written,
    command,
    copy_outputs,
    signal_during_post,
    start,
    thumbs_made,
)
from stress_helpers import decode, scale

pytestmark = [pytest.mark.stress, pytest.mark.together("post-signals")]

# Rounds of a seeded random command, signal and moment: three cover the three commands' stops
# in `make test`; `make soak` runs eight.
ITERATIONS = scale(8, 3)
SIGNALS = [
    (signal.SIGTERM,), (signal.SIGINT,), (signal.SIGINT, signal.SIGINT),
    (signal.SIGTERM, signal.SIGINT), (signal.SIGINT,) * 4,
]


def _sheet(manifest: Path, out: Path, cwd: Path) -> tuple[float, str]:
    """`sheet` to completion: (seconds from its first thumbnail to its exit, stderr)."""
    tag = uuid.uuid4().hex
    root = out / "big"
    with tempfile.TemporaryDirectory() as logs:
        err_file = Path(logs, "stderr")
        proc = start(["sheet", str(manifest), "--out", str(out)], cwd, tag, stderr=err_file)
        first = None
        while proc.poll() is None:
            if first is None and thumbs_made(root):
                first = time.monotonic()
            time.sleep(0.005)
        err = err_file.read_text(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    assert not Watch(proc.pid, tag, session=proc.pid).leftovers(wait=5)
    assert check_nothing_half_written(root) == N
    for sheet in root.glob("contact-sheet*.png"):
        decode(sheet)
    assert (root / "index.html").is_file()
    return time.monotonic() - (first or time.monotonic()), err


def test_signals_at_random_moments_of_post_processing(
        post_outputs: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, made = post_outputs
    # how long post-processing takes here, now: the window the signals are spread over
    window, _ = _sheet(manifest, copy_outputs(made, tmp_path / "clean"), tmp_path)
    rng = random.Random(20240612)
    outcomes = []
    for i in range(ITERATIONS):
        kind = rng.choice(["run", "sheet", "merge"])
        signals = rng.choice(SIGNALS)
        group = rng.random() < 0.5
        delay = rng.uniform(0, window * 0.75)
        top = tmp_path / f"it{i}"
        out = copy_outputs(made, top / "out")
        argv, root = command(kind, manifest, out, top / "merged")
        res = signal_during_post(argv, root, top, signals, group=group, delay=delay)
        what = (i, kind, [s.name for s in signals], "group" if group else "process",
                round(delay, 2), "exited first" if res.finished_first else "signalled",
                res.returncode)
        assert not res.leftovers, (what, res.leftovers, res.at_signal)
        assert "Traceback" not in res.stderr, (what, res.stderr[-3000:])
        complete = (root / "index.html").is_file() and len(thumbs_made(root)) == N
        if complete:
            # the work was done when the signal came (or it exited first): any orderly end,
            # or the signal's default action in the last moments after the work
            assert res.returncode in (0, 130, -signals[0]), (what, res.stderr[-3000:])
        else:
            assert res.returncode == 130, (what, res.stderr[-3000:])
            assert res.stderr.rstrip().splitlines()[-1] == INTERRUPTED, (what, res.stderr)
        check_nothing_half_written(top)
        outcomes.append(what)
        # the same folder post-processed again: completes and leaves nothing behind
        _sheet(manifest, out if kind != "merge" else top / "merged", top)
    print("\npost-processing stops:", *outcomes, sep="\n  ")
    assert sum(o[-1] == 130 for o in outcomes) >= ITERATIONS // 2, outcomes

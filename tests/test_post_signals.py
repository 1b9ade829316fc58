"""SIGTERM and SIGINT while `run`, `sheet` and `merge` make thumbnails: exit 130 with the run's
summary (`run`) or one line (`sheet`, `merge`), nothing half-written, no process left behind,
and the same command run again finishes the job.

Each command runs as its own process (forked from an interpreter that has imported
imagebatch: see post_signal_helpers; the embedded server for `run`) on N images with no
thumbnail made yet, and is signalled as soon as its
first thumbnail is written: by `kill` (the process alone) or, for Ctrl-C pressed twice, by
the terminal (the whole process group, pool workers included).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from post_signal_helpers import (
    INTERRUPTED,
    NAME,
    N,
    check_nothing_half_written,
    command,
    copy_outputs,
    finish,
    signal_during_post,
)

pytestmark = [pytest.mark.slow, pytest.mark.together("post-signals")]

CASES = {
    "sigterm": ((signal.SIGTERM,), False),
    "sigint": ((signal.SIGINT,), False),
    "ctrl-c-twice-to-the-group": ((signal.SIGINT, signal.SIGINT), True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["run", "sheet", "merge"])
def test_signal_during_thumbnailing_exits_130_and_leaves_no_process(
        post_outputs: tuple[Path, Path], tmp_path: Path, kind: str, case: str) -> None:
    manifest, made = post_outputs
    out = copy_outputs(made, tmp_path / "out")
    argv, root = command(kind, manifest, out, tmp_path / "merged")
    signals, group = CASES[case]
    res = signal_during_post(argv, root, tmp_path, signals, group=group)

    assert res.returncode == 130, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.rstrip().splitlines()[-1] == INTERRUPTED, res.stderr[-3000:]
    if (os.cpu_count() or 1) > 1:
        assert len(res.at_signal) >= 2, res.at_signal  # the thumbnail workers were running
    assert not res.leftovers, ("left running", res.leftovers, "at the signal", res.at_signal)
    # stopped while thumbnailing (not after it), and every file written is whole
    thumbs = check_nothing_half_written(tmp_path)
    assert 0 < thumbs < N
    assert not (root / "index.html").exists()
    if kind == "run":
        assert f"{NAME}: 0 made, {N} already done, 0 failed of {N}" in res.stdout
        assert json.loads((root / "summary.json").read_text())["interrupted"] is True
    else:
        assert res.stdout == ""

    if case != "sigterm":
        return
    # "run the same command again to finish"
    done, watch = finish(argv, tmp_path, os.urandom(8).hex())
    assert done.returncode == 0, done.stderr[-3000:]
    assert check_nothing_half_written(root) == N
    assert (root / "index.html").is_file() and (root / "contact-sheet.png").is_file()
    assert not watch.leftovers(wait=5), "left running after finishing"


def test_ctrl_c_while_the_workers_start(post_outputs: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    # `run` makes thumbnails in forkserver workers; one just forked has not yet set itself to
    # ignore Ctrl-C, and dies of it. That is the stop, not a failure: exit 130 all the same.
    manifest, made = post_outputs
    for i in range(5):  # the moment is narrow: several tries
        out = copy_outputs(made, tmp_path / f"out{i}")
        argv, root = command("run", manifest, out, tmp_path / f"merged{i}")
        res = signal_during_post(argv, root, tmp_path, (signal.SIGINT,), group=True,
                                 at_first_grandchild=True)
        assert res.returncode == 130, (i, res.returncode, res.stderr[-3000:])
        assert "Traceback" not in res.stderr, res.stderr[-3000:]
        assert res.stderr.rstrip().splitlines()[-1] == INTERRUPTED, res.stderr[-3000:]
        assert not res.leftovers, res.leftovers
        check_nothing_half_written(tmp_path)

"""Crashes: `imagebatch run` killed with SIGKILL at five seeded random moments, resumed each
time, then finished; and stopped with SIGINT (once, and twice to abort). Each run is a process
of its own, forked from an interpreter that has imported imagebatch (stress_helpers.Forker).

The server runs in the test process, so it counts what it answered per request body: a job
recorded done before a kill must never be asked for again, and the whole ordeal may cost at
most the requests that were in flight at each kill.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from stress_helpers import (
    Forked,
    check_run,
    cli_env,
    decode,
    embedded_server,
    every_file_decodes,
    load,
    results,
    run_args,
    run_argv,
    run_forked,
    scale,
    start_cli,
    temp_files,
)

from imagebatch.service.server import ServerOptions

pytestmark = pytest.mark.stress

# 300 jobs under `make soak`; 100 in `make test` still leave room for five kills at random
# points between the 15th result and 30 before the end, which is what the test checks.
N = scale(300, 100)
CONCURRENCY = 4
KILLS = 5
MANIFEST = f"""\
version: 1
name: crash
jobs:
  - id: tower
    prompt: "a radio tower on a hill"
    output_format: jpeg
    aspect_ratio: "9:21"
    seeds: {{start: 1, count: {N}}}
"""


def _ok_keys(root: Path) -> set[str]:
    return {r["key"] for r in results(root) if r["status"] == "ok"}


def _wait_for(root: Path, lines: int, proc: Forked | subprocess.Popen[str],
              limit: float = 60) -> None:
    """Until results.jsonl has at least `lines` lines; fails if the run ends first."""
    path = root / "results.jsonl"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before line {lines}")
        time.sleep(0.005)
    raise AssertionError(f"the run did not reach line {lines} in {limit} s")


def test_sigkill_at_five_random_moments_then_resume(tmp_path: Path) -> None:
    manifest = tmp_path / "crash.yaml"
    manifest.write_text(MANIFEST)
    plan = load(manifest)
    root = tmp_path / "out/crash"
    argv = run_args(manifest, tmp_path / "out", "--concurrency", str(CONCURRENCY), "--rpm", "0",
                    "--no-post")
    rng = random.Random(20240611)
    # where to kill: after a random number of finished jobs, plus a random sliver of time so
    # the kill lands anywhere in a job's life (in flight, mid-write, between write and record)
    targets = sorted(rng.sample(range(15, N - 30), KILLS))
    finished_before: list[tuple[set[str], dict[str, int]]] = []
    orphans = leftovers = 0
    # flat pictures: the test checks that files decode and match their records, not what
    # they show, and a flat one costs a fraction of a landscape's CPU (in a thread, no pool)
    with embedded_server(ServerOptions(latency_ms=40, flat=True)) as srv:
        env = cli_env(srv.url)
        for target in targets:
            proc = start_cli(argv, env, tmp_path)
            try:
                _wait_for(root, target, proc)
                time.sleep(rng.uniform(0, 0.06))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(60)
            # right after the kill: what was recorded done, and what the server had answered
            done = _ok_keys(root)
            finished_before.append((done, srv.served.snapshot()))
            # no half file under a final name: everything but temp files decodes fully
            every_file_decodes(root / "images")
            leftovers += len(temp_files(root))
            on_disk = {j.key for j in plan.jobs if (root / "images" / j.path).exists()}
            orphans += len(on_disk - done)  # written but not yet recorded: made again, by spec
        final = run_forked(argv, env, tmp_path, timeout=120)
        served = srv.served.snapshot()
        renders = srv.stats.renders
    assert final.returncode == 0, final.stderr[-2000:]
    summary = check_run(plan, root)
    assert summary["succeeded"] + summary["skipped"] == N
    assert summary["skipped"] >= len(finished_before[-1][0])
    for done, at_kill in finished_before:
        # a job recorded done before a kill was never asked for again
        again = {k: (at_kill.get(k, 0), served.get(k, 0)) for k in done
                 if served.get(k, 0) != at_kill.get(k, 0)}
        assert not again, again
    # the cost of five kills: at most the requests in flight at each one
    assert sum(served.values()) <= N + KILLS * CONCURRENCY, sum(served.values())
    assert all(served.get(j.key, 0) >= 1 for j in plan.jobs)
    print(f"\ncrashes: {N} jobs, {KILLS} SIGKILLs after {targets} results, "
          f"{sum(served.values())} images served ({sum(served.values()) - N} extra), "
          f"{renders} renders, {orphans} written-but-unrecorded at a kill, "
          f"{leftovers} temp files left by kills (all removed)")


MANIFEST_SMALL = """\
version: 1
name: stop
jobs:
  - id: bell
    prompt: "a bell tower at night"
    output_format: jpeg
    aspect_ratio: "21:9"
    seeds: {start: 1, count: 60}
"""


@pytest.mark.parametrize("signals", [1, 2], ids=["sigint", "sigint-twice"])
def test_sigint_exits_130_with_a_summary_and_nothing_half_written(tmp_path: Path,
                                                                   signals: int) -> None:
    # test_signals.py covers SIGTERM; Ctrl-C is SIGINT, and a second one aborts in flight work
    manifest = tmp_path / "stop.yaml"
    manifest.write_text(MANIFEST_SMALL)
    plan = load(manifest)
    root = tmp_path / "out/stop"
    argv = run_args(manifest, tmp_path / "out", "--concurrency", "4", "--rpm", "0")
    with embedded_server(ServerOptions(latency_ms=150, flat=True)) as srv:
        proc = start_cli(argv, cli_env(srv.url), tmp_path, stderr=tmp_path / "stderr")
        _wait_for(root, 5, proc)
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.02)
        proc.wait(60)
        err = (tmp_path / "stderr").read_text()
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "interrupted" in err
        summary = json.loads((root / "summary.json").read_text())
        assert summary["interrupted"] is True
        assert 0 < summary["succeeded"] < len(plan.jobs) and summary["pending"] > 0
        files = [p for p in (root / "images").rglob("*") if p.is_file()]
        for p in files:
            decode(p)
        # every image on disk is recorded, whether its request was settled or aborted
        assert len(files) == summary["succeeded"] == len(_ok_keys(root))
        assert not temp_files(root)
        # and the same command finishes the rest
        rest = run_forked(argv, cli_env(srv.url), tmp_path, timeout=60)
    assert rest.returncode == 0, rest.stderr
    check_run(plan, root)


def test_ctrl_c_held_down_still_exits_130_with_a_summary(tmp_path: Path) -> None:
    # Signals keep coming while the run settles, writes its summary and exits: the late
    # ones must not turn exit 130 into death by SIGINT (-2) or a traceback.
    manifest = tmp_path / "stop.yaml"
    manifest.write_text(MANIFEST_SMALL)
    root = tmp_path / "out/stop"
    # A fresh interpreter, not a forked child: run forked, this test once (of about 300
    # runs) saw "Exception ignored when trying to write to the signal wakeup fd: Bad file
    # descriptor" twice on stderr after the stop began (exit 130 all the same); not yet
    # explained, and not seen in the runs from a fresh interpreter so far.
    argv = run_argv(manifest, tmp_path / "out", "--concurrency", "4", "--rpm", "0")
    with embedded_server(ServerOptions(latency_ms=150, flat=True)) as srv:
        proc = subprocess.Popen(argv, env=cli_env(srv.url), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(root, 5, proc)
        sent = 0
        while proc.poll() is None and sent < 2000:
            proc.send_signal(signal.SIGINT)
            sent += 1
            time.sleep(0.002)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (sent, err)
    assert "Traceback" not in err and "interrupted" in err
    assert json.loads((root / "summary.json").read_text())["interrupted"] is True


def test_sigint_is_prompt_while_requests_are_paced(tmp_path: Path) -> None:
    # At the default pacing for a URL (20 a minute) most workers wait in the leaky bucket,
    # not in a request: a stop must reach them there at once, not after their slot (3 s
    # apart, so concurrency x 3 s).
    manifest = tmp_path / "stop.yaml"
    manifest.write_text(MANIFEST_SMALL)
    root = tmp_path / "out/stop"
    argv = run_args(manifest, tmp_path / "out", "--concurrency", "8")
    with embedded_server(ServerOptions(flat=True)) as srv:
        proc = start_cli(argv, cli_env(srv.url), tmp_path, stderr=tmp_path / "stderr")
        _wait_for(root, 1, proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        err = (tmp_path / "stderr").read_text()
        took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert took < 2.5, f"{took:.1f} s from SIGINT to exit"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["pending"] > 0

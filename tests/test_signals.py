"""A run killed with SIGKILL is finished by a second run; SIGTERM exits 130; nothing
half-written. Each run is a process of its own, forked from an interpreter that has imported
imagebatch (stress_helpers.Forker)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from PIL import Image
from stress_helpers import Forked, embedded_server, run_forked, start_cli

from imagebatch.service.server import ServerOptions

ROOT = Path(__file__).resolve().parent.parent
KEY = "inf-SECRETSECRET123"
N = 40


MANIFEST = f"""version: 1
name: demo
jobs:
  - id: fox
    prompt: "a fox"
    aspect_ratio: "1:1"
    output_format: png
    seeds: {{start: 1, count: {N}}}
"""


@pytest.fixture(scope="module")
def server():
    """The embedded server in a thread of this process, shared by the module's tests (each
    run writes its own folder; the server keeps nothing a run reads). What is checked is
    the run's process; the server's flat pictures decode at the asked size like any."""
    options = ServerOptions(key=KEY, latency_ms=300, workers=1, flat=True)
    with embedded_server(options) as srv:
        yield srv.url


def _run_args(tmp_path: Path) -> list[str]:
    """`imagebatch run` of the demo manifest (written on first use) into tmp_path/out."""
    manifest = tmp_path / "demo.yaml"
    if not manifest.exists():
        manifest.write_text(MANIFEST)
    return ["run", str(manifest), "--out", str(tmp_path / "out"), "--concurrency", "4",
            "--rpm", "6000", "--no-post"]


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSION_")}
    env.update(DIFFUSION_URL=url, DIFFUSION_KEY=KEY, PYTHONPATH=str(ROOT))
    return env


def _final_files(tmp_path: Path) -> list[Path]:
    images = tmp_path / "out/demo/images"
    return [p for p in images.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]


def _all_decode(paths: list[Path]) -> None:
    for p in paths:
        with Image.open(p) as img:
            img.load()
            assert img.size == (1024, 1024)


def _wait_for_results(tmp_path: Path, at_least: int, proc: Forked) -> None:
    results = tmp_path / "out/demo/results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError("the run never got going")


@pytest.mark.slow
def test_sigkill_mid_run_then_second_run_finishes(tmp_path, server):
    proc = start_cli(_run_args(tmp_path), _env(server), tmp_path)
    _wait_for_results(tmp_path, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    first = _final_files(tmp_path)
    assert 0 < len(first) < N
    _all_decode(first)  # nothing half-written under a final name
    done_before = {json.loads(x)["key"] for x in
                   (tmp_path / "out/demo/results.jsonl").read_text().splitlines() if x.strip()}
    second = run_forked(_run_args(tmp_path), _env(server), tmp_path, timeout=120)
    assert second.returncode == 0, second.stderr
    summary = json.loads((tmp_path / "out/demo/summary.json").read_text())
    assert summary["succeeded"] + summary["skipped"] == N and summary["failed"] == 0
    assert summary["skipped"] >= len(done_before)  # finished work is not redone
    assert summary["requests"] == summary["succeeded"]
    files = _final_files(tmp_path)
    assert len(files) == N
    _all_decode(files)
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]
    for blob in [second.stdout, second.stderr]:
        assert KEY not in blob


@pytest.mark.slow
def test_sigterm_settles_in_flight_writes_summary_exits_130(tmp_path, server):
    proc = start_cli(_run_args(tmp_path), _env(server), tmp_path,
                     stdout=tmp_path / "stdout", stderr=tmp_path / "stderr")
    _wait_for_results(tmp_path, 4, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, err
    assert "interrupted" in err and KEY not in out + err
    summary = json.loads((tmp_path / "out/demo/summary.json").read_text())
    assert summary["interrupted"] is True
    assert 0 < summary["succeeded"] < N and summary["pending"] > 0
    files = _final_files(tmp_path)
    _all_decode(files)
    assert len(files) == summary["succeeded"]  # in-flight ones were settled and recorded
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


# -- a late signal while the handlers are taken down (Ctrl-C held down) ---------------------

@pytest.mark.parametrize("stopping", [True, False])
async def test_a_signal_landing_as_the_loop_handlers_come_off(monkeypatch, handlers_restored,
                                                             stopping):
    # asyncio's remove_signal_handler puts Python's default SIGINT handler back; a signal
    # landing right then raises KeyboardInterrupt there. Once stopping, it is one of the
    # late signals to ignore, and both signals must end up ignored (before, the rest of the
    # cleanup was skipped: a later signal killed the exit, seen as exit -2 and a traceback
    # in the interpreter's shutdown with Ctrl-C held down). Not stopping, it is a Ctrl-C.
    import asyncio

    from imagebatch.signals import on_stop_signals

    loop = asyncio.get_running_loop()
    remove = loop.remove_signal_handler

    def remove_then_a_signal(sig: int) -> bool:
        removed = remove(sig)
        if sig == signal.SIGINT:
            raise KeyboardInterrupt  # what the default handler does with one arriving now
        return removed

    monkeypatch.setattr(loop, "remove_signal_handler", remove_then_a_signal)
    if stopping:
        with on_stop_signals(lambda: None, ignore_after=lambda: True):
            pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    else:
        with pytest.raises(KeyboardInterrupt), \
                on_stop_signals(lambda: None, ignore_after=lambda: False):
            pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # taken off all the same
    monkeypatch.undo()


def test_a_command_ended_by_ctrl_c_ignores_the_ones_after_it(monkeypatch, handlers_restored):
    from imagebatch import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "schema", interrupted)
    assert cli.main(["schema"]) == 130
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("where", ["setting SIG_IGN", "clearing the wakeup fd"])
async def test_a_signal_cutting_a_step_short_leaves_no_handler_and_no_wakeup_fd(
        monkeypatch, handlers_restored, where):
    # Ctrl-C held down: one late SIGINT lands in signal.signal(SIGINT, SIG_IGN) (which first
    # runs the default handler of a signal already received), or inside asyncio's taking off
    # of the last handler, before it clears the wakeup fd. Both steps must still end done:
    # the loop closes its wakeup socket next, and a signal written to a closed fd prints
    # "Exception ignored when trying to write to the signal wakeup fd" for each one.
    import asyncio

    from imagebatch.signals import on_stop_signals

    loop = asyncio.get_running_loop()
    real_signal, real_wakeup = signal.signal, signal.set_wakeup_fd
    landed = []

    def signal_with_one_pending(sig, handler):
        if where == "setting SIG_IGN" and handler is signal.SIG_IGN and not landed:
            landed.append(sig)
            raise KeyboardInterrupt  # the pending SIGINT's default handler, run first
        return real_signal(sig, handler)

    def wakeup_cut_short(fd, **kwargs):
        if where == "clearing the wakeup fd" and fd == -1 and not landed:
            landed.append(fd)
            raise KeyboardInterrupt  # landed just before asyncio's own clearing
        return real_wakeup(fd, **kwargs)

    monkeypatch.setattr(signal, "signal", signal_with_one_pending)
    monkeypatch.setattr(signal, "set_wakeup_fd", wakeup_cut_short)
    with on_stop_signals(lambda: None, ignore_after=lambda: True):
        pass
    monkeypatch.undo()
    assert landed  # the signal did land where it was meant to
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert not loop._signal_handlers  # type: ignore[attr-defined]
    assert signal.set_wakeup_fd(-1) == -1  # nothing is left to write signals to

"""Stopping thumbnail workers: a stop request, a worker that dies, and the signal handlers of
`sheet` and `merge` (stop_on_signals). In-process; the commands themselves are driven by
signals in test_post_signals.py.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from imagebatch.errors import Interrupted
from imagebatch.pictures import post
from imagebatch.pictures.post import Stop, make_thumbs, stop_on_signals

N = 24


def _tasks(tmp_path: Path, n: int = N) -> list[tuple[str, str, int]]:
    src = tmp_path / "images"
    src.mkdir()
    tasks = []
    for i in range(n):
        path = src / f"{i}.png"
        Image.new("RGB", (128, 96), (i * 10 % 256, 90, 200)).save(path)
        tasks.append((str(path), str(tmp_path / "thumbs" / f"{i}.png.jpg"), 48))
    return tasks


def _temp_files(tmp_path: Path) -> list[Path]:
    return list(tmp_path.rglob(".tmp-*"))


@pytest.fixture
def fork_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers forked from this process, so they run the make_thumb patched in here."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    monkeypatch.setattr(post, "_context", lambda: multiprocessing.get_context("fork"))


def _in_thread(fn, limit: float = 60.0) -> BaseException | object:
    """fn() in a thread; what it returned or raised. Fails if it is still running at `limit`."""
    box: dict[str, object] = {}

    def go() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["value"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "still running: the workers were not stopped"
    return box["value"]


def test_parallel_thumbnails_leave_no_worker(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # workers for these 24 whatever the start method (a forkserver's start below 48)
    monkeypatch.setattr(post, "PARALLEL_MIN_SPAWNED", post.PARALLEL_MIN)
    results = make_thumbs(_tasks(tmp_path), 2)
    assert results == [(48, 36)] * N
    assert not multiprocessing.active_children()
    for i in range(N):
        with Image.open(tmp_path / "thumbs" / f"{i}.png.jpg") as im:
            assert im.size == (48, 36)


@pytest.mark.parametrize("workers", [1, 2], ids=["alone", "workers"])
def test_a_stop_asked_before_starts_nothing(tmp_path: Path, workers: int) -> None:
    stop = Stop()
    stop.set()
    before = set(multiprocessing.active_children())  # other tests' pools may still be closing
    with pytest.raises(Interrupted, match="run the same command again"):
        make_thumbs(_tasks(tmp_path), workers, stop)
    assert not (tmp_path / "thumbs").exists()
    assert not set(multiprocessing.active_children()) - before


def _stuck_writing(task: tuple[str, str, int]) -> tuple[int, int]:
    """A worker caught mid-write: its temp file is on disk when it is stopped."""
    dest = Path(task[1])
    dest.parent.mkdir(parents=True, exist_ok=True)
    post._thumb_tmp(dest, os.getpid()).write_bytes(b"\xff\xd8 half a JPEG")
    time.sleep(3600)
    raise AssertionError("not stopped")


def test_stop_kills_busy_workers_and_removes_their_temp_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_only: None) -> None:
    monkeypatch.setattr(post, "make_thumb", _stuck_writing)
    stop = Stop()

    def request_stop_once_both_are_writing() -> None:
        deadline = time.monotonic() + 60
        while len(_temp_files(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=request_stop_once_both_are_writing, daemon=True).start()
    outcome = _in_thread(lambda: make_thumbs(_tasks(tmp_path), 2, stop))
    assert isinstance(outcome, Interrupted), outcome
    assert not multiprocessing.active_children()
    assert not _temp_files(tmp_path)


_MAKE_THUMB = post.make_thumb


def _dies_on_the_fifth(task: tuple[str, str, int]) -> tuple[int, int] | str:
    if task[0].endswith("/5.png"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _MAKE_THUMB(task)


def test_a_worker_that_dies_is_an_error_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_only: None) -> None:
    monkeypatch.setattr(post, "make_thumb", _dies_on_the_fifth)
    outcome = _in_thread(lambda: make_thumbs(_tasks(tmp_path), 2))
    assert isinstance(outcome, RuntimeError) and "ended unexpectedly" in str(outcome), outcome
    assert not multiprocessing.active_children()


class _SecondWorkerDiesStarting:
    """A fork context whose second worker breaks its start pipe, as a forkserver worker does
    when a Ctrl-C to the process group kills it before it has read its start data."""

    def __init__(self) -> None:
        self.real = multiprocessing.get_context("fork")
        self.started = 0

    def get_start_method(self) -> str:
        return "fork"

    def Pipe(self):  # noqa: N802 - the context's own name
        return self.real.Pipe()

    def Process(self, **kwargs):  # noqa: N802 - the context's own name
        proc = self.real.Process(**kwargs)
        self.started += 1
        if self.started == 2:
            def broken() -> None:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            proc.start = broken
        return proc


@pytest.mark.parametrize("asked", [True, False], ids=["stop-asked", "no-stop"])
def test_a_worker_that_dies_while_starting_is_the_stop_or_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_only: None, asked: bool) -> None:
    # never the BrokenPipeError itself: `imagebatch` would take it for its output closing
    monkeypatch.setattr(post, "_context", _SecondWorkerDiesStarting)
    stop = Stop()
    if asked:  # the same signal reaches this process a moment later, as a stop request
        threading.Timer(post.LOST_GRACE / 5, stop.set).start()
    outcome = _in_thread(lambda: make_thumbs(_tasks(tmp_path), 2, stop))
    if asked:
        assert isinstance(outcome, Interrupted), outcome
    else:
        assert isinstance(outcome, RuntimeError), outcome
        assert str(outcome) == "a thumbnail worker process ended while it was starting"
    assert not multiprocessing.active_children()
    assert not (tmp_path / "thumbs").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_asks_for_a_stop_and_later_ones_are_ignored(sig: int,
                                                              handlers_restored: None) -> None:
    with stop_on_signals() as stop:
        os.kill(os.getpid(), sig)  # handled before kill() returns to Python code
        assert stop.requested
        os.kill(os.getpid(), sig)  # a second Ctrl-C changes nothing
    # stopped: until the process exits, neither signal can cut its orderly exit short
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_without_a_signal_the_handlers_are_given_back(handlers_restored: None) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals() as stop:
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    assert not stop.requested
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)

    def enter() -> bool:
        with stop_on_signals() as stop:
            return signal.getsignal(signal.SIGTERM) == before and not stop.requested

    assert _in_thread(enter) is True


@pytest.mark.parametrize(("method", "count", "pooled"), [
    ("fork", 11, False), ("fork", 12, True),
    ("forkserver", 24, False), ("forkserver", 47, False), ("forkserver", 48, True)])
def test_a_pool_starts_only_where_it_saves_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               method: str, count: int, pooled: bool) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"needs the {method} start method")
    monkeypatch.setattr(post, "_context", lambda: multiprocessing.get_context(method))
    started: list[int] = []
    real = post._Workers

    def counting(tasks: list, *rest: object) -> object:
        started.append(len(tasks))
        return real(tasks, *rest)

    monkeypatch.setattr(post, "_Workers", counting)
    results = make_thumbs(_tasks(tmp_path, count), 2)
    assert results == [(48, 36)] * count
    assert started == ([count] if pooled else [])
    assert not multiprocessing.active_children()

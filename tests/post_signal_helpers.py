"""Stopping post-processing with signals: the outputs to thumbnail, the commands, and a watch
over the process table.

A command runs as its own process in its own session (a child the shared Forker forks: the
`imagebatch` program, without a fresh interpreter's imports), so a signal can go to it alone
(`kill PID`) or to its whole process group, as a terminal's Ctrl-C does. While it runs, every
descendant it has is recorded (pid and start time, from /proc/<pid>/task/*/children); each
is also in its session, and the processes it starts fresh inherit a tag in their environment.
After it exits, no recorded descendant, no process of its session and no tagged process may
be left alive, wherever it was reparented.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from stress_helpers import ROOT, Forked, cli_env, decode, forker, scale

#: Images to thumbnail, and the thumbnails' size: enough that post-processing takes a few
#: seconds on two cores, so a signal lands in the middle of it. `make soak` (SOAK=1) makes
#: 96 full-size (2048) thumbnails; `make test` 64 small ones, which stop the same way in a
#: third of the CPU time (decoding the images is then most of the work).
N = scale(96, 64)
THUMBNAIL = scale(2048, 256)
NAME = "big"
MANIFEST = f"""\
version: 1
name: {NAME}
output: {{thumbnail: {THUMBNAIL}}}
jobs:
  - id: tower
    prompt: "a radio tower on a hill"
    output_format: png
    aspect_ratio: "1:1"
    seeds: {{start: 1, count: {N}}}
"""
INTERRUPTED = "imagebatch: interrupted; run the same command again to finish"
TAG_VARIABLE = "IMAGEBATCH_PROCESS_TAG"


def make_outputs(top: Path) -> tuple[Path, Path]:
    """(manifest, --out folder) holding N images made by `run --no-post`, not thumbnailed.

    Made in this process (`imagebatch.cli.main`, the embedded server's landscapes): only the
    commands the tests signal need processes of their own."""
    from imagebatch.cli import main

    top.mkdir(parents=True, exist_ok=True)
    manifest = top / f"{NAME}.yaml"
    manifest.write_text(MANIFEST)
    out = top / "out"
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(err):
        for name in list(os.environ):  # the embedded server, whatever the caller has set
            if name.startswith(("DIFFUSION_", "INFERENCE_", "STABILITY_", "IMAGEBATCH_")):
                mp.delenv(name)
        mp.chdir(top)
        code = main(["run", str(manifest), "--out", str(out), "--rpm", "0", "--no-post"])
    assert code == 0, err.getvalue()
    assert not (out / NAME / "thumbs").exists()
    return manifest, out


def copy_outputs(out: Path, dest: Path) -> Path:
    """A fresh copy of an --out folder; returns the copy."""
    shutil.copytree(out, dest)
    return dest


def command(kind: str, manifest: Path, out: Path, merged: Path) -> tuple[list[str], Path]:
    """(`imagebatch` arguments, the output folder it post-processes) of `run`, `sheet` or
    `merge`."""
    if kind == "run":
        return ["run", str(manifest), "--out", str(out), "--rpm", "0"], out / NAME
    if kind == "sheet":
        return ["sheet", str(manifest), "--out", str(out)], out / NAME
    if kind == "merge":
        return ["merge", str(out), "--out", str(merged)], merged / NAME
    raise ValueError(kind)


def start(argv: Sequence[str], cwd: Path, tag: str, stdout: Path | str = os.devnull,
          stderr: Path | str = os.devnull) -> Forked:
    """`imagebatch ARGV` as its own process in a session of its own, tagged with `tag`."""
    with forker() as commands:
        return commands.spawn(list(argv), tagged_env(tag), cwd, stdout=stdout, stderr=stderr,
                              session=True)


def finish(argv: Sequence[str], cwd: Path, tag: str,
           timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], Watch]:
    """`imagebatch ARGV` run to its end as `start` runs it: (what it did, a Watch of its
    session and tag, for what it may have left running)."""
    logs = tempfile.TemporaryDirectory()
    stdout, stderr = Path(logs.name) / "stdout", Path(logs.name) / "stderr"
    with logs:
        proc = start(argv, cwd, tag, stdout, stderr)
        code = proc.wait(timeout)
        done = subprocess.CompletedProcess(list(argv), code, stdout.read_text(errors="replace"),
                                           stderr.read_text(errors="replace"))
    return done, Watch(proc.pid, tag, session=proc.pid)


# -- the process table --------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, start time, session id) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19]), int(fields[3])


def _children(pid: int) -> list[int]:
    out = []
    try:  # the process may end between a look at the table and this one
        tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:
        return []
    for path in tasks:
        try:
            out += [int(x) for x in path.read_text().split()]
        except OSError:
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")[:160]
    except OSError:
        return "?"


def describe(pid: int) -> str:
    st = _stat(pid)
    return f"pid {pid} state {st[0] if st else '-'} parent {st[1] if st else '-'}: {_cmdline(pid)}"


@dataclass
class Watch:
    """Every descendant of one process seen while it runs, polled from a thread."""

    pid: int
    tag: str
    session: int | None = None  # the session its processes are in, when it has its own
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start time
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(0.005)

    def poll(self) -> None:
        """Record the descendants the process has now."""
        todo = _children(self.pid)
        while todo:
            pid = todo.pop()
            st = _stat(pid)
            if st is None:
                continue
            self.seen.setdefault(pid, st[2])
            todo += _children(pid)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def descendants_alive(self) -> list[int]:
        """Recorded descendants still running (the same process: same start time, no zombie)."""
        alive = []
        # a copy: the watching thread may still be adding what it saw
        for pid, started in list(self.seen.items()):
            st = _stat(pid)
            if st is not None and st[2] == started and st[0] != "Z":
                alive.append(pid)
        return alive

    def tagged_alive(self) -> list[int]:
        """Any live process but the test's own in the command's session, or that inherited
        this run's tag (a process started by exec carries it; a forked one, the session)."""
        needle = f"{TAG_VARIABLE}={self.tag}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            st = _stat(pid)
            if st is None or st[0] == "Z":
                continue
            if self.session is not None and st[3] == self.session:
                found.append(pid)
                continue
            try:
                env = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in env.split(b"\0"):
                found.append(pid)
        return found

    def leftovers(self, wait: float = 10.0) -> list[str]:
        """What is still alive `wait` seconds after the process exited (polled; [] is clean).

        A forkserver and its resource tracker end when they read end-of-file from the pipes
        of a process that has exited: they get a moment, not an indefinite stay."""
        deadline = time.monotonic() + wait
        while True:
            left = sorted(set(self.descendants_alive()) | set(self.tagged_alive()))
            if not left or time.monotonic() > deadline:
                return [describe(pid) for pid in left]
            time.sleep(0.05)


def tagged_env(tag: str) -> dict[str, str]:
    """The environment of a command: the embedded server, and this run's process tag."""
    return cli_env(**{TAG_VARIABLE: tag})


@dataclass
class Stopped:
    """What a command did when signalled during post-processing."""

    returncode: int
    stdout: str
    stderr: str
    at_signal: list[str]  # its descendants when the first signal was sent
    leftovers: list[str]
    finished_first: bool = False  # it exited before any signal could be sent


def thumbs_made(root: Path) -> list[Path]:
    """Thumbnails under their final names."""
    folder = root / "thumbs"
    return [p for p in folder.rglob("*.jpg") if not p.name.startswith(".tmp-")] \
        if folder.is_dir() else []


def _has_grandchild(pid: int) -> bool:
    return any(_children(child) for child in _children(pid))


def signal_during_post(argv: Sequence[str], root: Path, cwd: Path, signals: Sequence[int], *,
                       group: bool = False, delay: float = 0.0, gap: float = 0.02,
                       at_first_grandchild: bool = False) -> Stopped:
    """Start `imagebatch ARGV`, wait until its first thumbnail is written under `root`, wait
    `delay` seconds more, then send `signals` (to it alone, or to its process group), `gap`
    seconds apart.

    With `at_first_grandchild`, signal as soon as it has one instead: for `run`, whose pool
    workers are the fork server's children, the moment the first worker is starting."""
    tag = uuid.uuid4().hex
    # Output goes to files, not pipes: a process left behind holding a pipe open would keep
    # the test waiting for its end instead of reporting it.
    logs = tempfile.TemporaryDirectory()
    stdout, stderr = Path(logs.name) / "stdout", Path(logs.name) / "stderr"
    proc = start(argv, cwd, tag, stdout, stderr)
    watch = Watch(proc.pid, tag, session=proc.pid).start()
    try:
        deadline = time.monotonic() + 180
        while not (_has_grandchild(proc.pid) if at_first_grandchild else thumbs_made(root)):
            if proc.poll() is not None:
                raise AssertionError(f"ended (exit {proc.returncode}) before thumbnailing: "
                                     f"{stderr.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("thumbnailing never started")
            time.sleep(0.0005 if at_first_grandchild else 0.005)
        time.sleep(delay)
        watch.poll()
        at_signal = [describe(pid) for pid in watch.descendants_alive()]
        finished_first = proc.poll() is not None
        for sig in signals if not finished_first else ():
            if proc.poll() is not None:
                break
            if group:
                with contextlib.suppress(ProcessLookupError):  # all of it ended just now
                    os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            time.sleep(gap)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
        watch.stop()
    left = watch.leftovers()
    for pid in set(watch.descendants_alive()) | set(watch.tagged_alive()):
        with contextlib.suppress(OSError):  # reported above; not left to burden the machine
            os.kill(pid, signal.SIGKILL)
    with logs:
        return Stopped(proc.returncode, stdout.read_text(errors="replace"),
                       stderr.read_text(errors="replace"), at_signal, left, finished_first)


def check_nothing_half_written(top: Path) -> int:
    """No temp file anywhere under `top`; every thumbnail decodes fully; how many there are."""
    temps = [p for p in top.rglob(".tmp-*")]
    assert not temps, temps
    count = 0
    for p in top.rglob("*.jpg"):
        if "thumbs" not in p.relative_to(top).parts:
            continue
        fmt, _size = decode(p)
        assert fmt == "JPEG", p
        count += 1
    return count


__all__ = [
    "INTERRUPTED",
    "MANIFEST",
    "NAME",
    "ROOT",
    "N",
    "Stopped",
    "Watch",
    "check_nothing_half_written",
    "command",
    "copy_outputs",
    "describe",
    "finish",
    "make_outputs",
    "signal_during_post",
    "start",
    "tagged_env",
    "thumbs_made",
]

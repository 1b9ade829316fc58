"""Shared pieces of the stress suite (tests/test_stress_*.py).

Servers run in a background thread of the test process, so a run driven as a user would
(`python -m imagebatch run` in a subprocess, or `imagebatch.cli.main` in-process) talks to them
over real sockets while the test reads their live counters. Checks compare what a run says
(results.jsonl, summary.json) with what is on disk, decoding every image with Pillow.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import contextlib
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from PIL import Image

from imagebatch.planning import apispec
from imagebatch.planning.plan import Plan, job_key
from imagebatch.service.server import STATS_KEY, RunningServer, ServerOptions, make_app

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

#: A key distinctive enough that a scan for it (or its base64) cannot hit by chance.
SECRET_KEY = "inf-SECRET-7f3c9e2a41d8b6c0-stress"

#: `make soak` sets SOAK=1: the stress suite then runs at its full sizes (2,000 chaos jobs,
#: eight rounds of signals, ...). `make test` runs the same checks at sizes that still reach
#: every case they check, so the whole suite stays within minutes on two cores.
SOAK = os.environ.get("SOAK", "") not in ("", "0")


def scale(soak: int, default: int) -> int:
    """`soak` under `make soak` (SOAK=1), else `default`: a size that is not what a test checks."""
    return soak if SOAK else default


# -- servers in a thread ------------------------------------------------------------------

@contextlib.contextmanager
def in_thread(start: Callable[[], AbstractAsyncContextManager[T]]) -> Iterator[T]:
    """Enter the async context `start()` on an event loop in a daemon thread; yield its value.

    The loop runs until the `with` block ends, so a subprocess (or an in-process run on its
    own loop) can talk to it while the test thread reads its state.
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["loop"], box["stop"] = asyncio.get_running_loop(), stop
        try:
            async with start() as value:
                box["value"] = value
                ready.set()
                await stop.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("server thread did not start")
    if "error" in box:
        raise box["error"]
    try:
        yield box["value"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


@dataclass
class Served:
    """Per request-body counts of what a server answered, keyed by the body's job key."""

    images: collections.Counter[str] = field(default_factory=collections.Counter)  # 200s
    requests: collections.Counter[str] = field(default_factory=collections.Counter)

    def snapshot(self) -> dict[str, int]:
        """A copy of the 200 counts (safe to read from another thread: one dict copy)."""
        return dict(self.images)


@dataclass(frozen=True)
class Embedded:
    """The embedded server, started by a test: URL, its ServerStats, and per-body counts."""

    server: RunningServer
    served: Served

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def stats(self) -> Any:
        return self.server.stats


@contextlib.asynccontextmanager
async def _embedded(options: ServerOptions) -> AsyncIterator[Embedded]:
    # imagebatch.service.server.running_server, plus an outer middleware that counts answers
    # per body key: the server's own `renders` counter misses repeats served from its render cache.
    app = make_app(options)
    served = Served()

    @web.middleware
    async def count(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.method != "POST" or request.path != apispec.ENDPOINT:
            return await handler(request)
        raw = await request.read()  # aiohttp keeps the body: the handler reads it again
        try:
            key = job_key(json.loads(raw))
        except (ValueError, TypeError):
            key = "?"
        served.requests[key] += 1
        response = await handler(request)
        transport = request.transport
        if response.status == 200 and transport is not None and not transport.is_closing():
            served.images[key] += 1
        return response

    app.middlewares.insert(0, count)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Embedded(RunningServer(url=f"http://127.0.0.1:{port}", port=port,
                                     stats=app[STATS_KEY], app=app), served)
    finally:
        await runner.cleanup()


def embedded_server(options: ServerOptions) -> contextlib.AbstractContextManager[Embedded]:
    """The embedded server with `options`, serving from a background thread."""
    return in_thread(lambda: _embedded(options))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _app(handler: Handler) -> AsyncIterator[str]:
    app = web.Application(client_max_size=2**20)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def app_server(handler: Handler) -> contextlib.AbstractContextManager[str]:
    """A tiny aiohttp server answering every path with `handler`; yields its base URL."""
    return in_thread(lambda: _app(handler))


# -- running imagebatch -------------------------------------------------------------------

def cli_env(url: str | None = None, key: str | None = SECRET_KEY, **extra: str) -> dict[str, str]:
    """The environment of a `python -m imagebatch` subprocess: no caller DIFFUSION_* leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DIFFUSION_", "INFERENCE_")) and k != "GITHUB_STEP_SUMMARY"}
    env["PYTHONPATH"] = str(ROOT)
    if url is not None:
        env["DIFFUSION_URL"] = url
    if key is not None:
        env["DIFFUSION_KEY"] = key
    env.update(extra)
    return env


def run_argv(manifest: Path, out: Path, *options: str) -> list[str]:
    """argv of `python -m imagebatch run MANIFEST --out OUT OPTIONS...`."""
    return [sys.executable, "-m", "imagebatch", "run", str(manifest), "--out", str(out), *options]


def run_args(manifest: Path, out: Path, *options: str) -> list[str]:
    """The arguments of `imagebatch run MANIFEST --out OUT OPTIONS...` (for a Forker)."""
    return ["run", str(manifest), "--out", str(out), *options]


def run_cli(argv: list[str], env: Mapping[str, str], cwd: Path,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run to completion, capturing text output."""
    return subprocess.run(argv, check=False, env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# One interpreter that has imported imagebatch forks a child per command: the child is a
# process of its own (its own environment, cwd, stdout and stderr files, exit status, memory,
# signals, session and exit handlers) without paying a fresh interpreter's imports (~0.5
# CPU-s a command). For tests of what a command does, or of how it takes signals, not of how
# a process starts. Children may overlap: each one's end is reported when it is reaped.
_FORKER = r"""
import array, json, os, select, signal, socket, sys
# Commands may also come from other processes (`make` running the stand-in `imagebatch`
# script, _CALLER below) on a Unix socket: the request, with the caller's standard input,
# output and error passed along; the exit status goes back on the same connection. Bound
# before the imports, so that a caller who comes early waits in the backlog.
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(16)
from imagebatch.cli import console  # what every command imports, once
# and what `run`, `status` and `sheet` import when they start (aiohttp alone, with the CA
# store it loads at import, is a quarter of a CPU-second a process); it starts no thread,
# so forking after it is safe
import imagebatch.running.run  # noqa: F401

# a child's end arrives as SIGCHLD, written to a pipe this loop watches beside its input
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)


callers = {}  # pid of a child started for a caller -> the caller's connection


def reap(block):
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        caller = callers.pop(pid, None)
        if caller is None:
            os.write(1, f"exit {pid} {code}\n".encode())
            continue
        try:
            caller.sendall(f"{code}\n".encode())
        except OSError:  # the caller is gone
            pass
        caller.close()


def from_caller():
    # one request line and three descriptors (0, 1, 2 of the caller), then fork for it
    conn, _ = listener.accept()
    fds = array.array("i")
    data = b""
    while not data.endswith(b"\n"):
        msg, anc, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * fds.itemsize))
        if not msg:
            conn.close()
            return None
        data += msg
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if len(fds) != 3:  # without its own 0, 1 and 2 a child would write into this protocol
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:
        conn.close()
        got = json.loads(data)
        got.update(stdio=list(fds), session=False, peak_rss=False)
        return got
    for fd in fds:
        os.close(fd)
    callers[pid] = conn
    return None


pending, req = b"", None
while req is None:
    ready, _, _ = select.select([0, wake_r, listener], [], [])
    if wake_r in ready:
        os.read(wake_r, 4096)
        reap(False)
    if listener in ready:
        req = from_caller()
        if req is not None:
            break
    if 0 not in ready:
        continue
    chunk = os.read(0, 1 << 16)
    if not chunk:  # end of input: the children left, then this process, end
        reap(True)
        sys.exit(0)
    pending += chunk
    while req is None and b"\n" in pending:
        line, pending = pending.split(b"\n", 1)
        pid = os.fork()
        if pid == 0:
            req = json.loads(line)
        else:
            os.write(1, f"started {pid}\n".encode())

# the child: from here on, as `imagebatch ARGV` would run
signal.set_wakeup_fd(-1)
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
os.close(wake_r)
os.close(wake_w)
listener.close()
for conn in callers.values():
    conn.close()
if req["session"]:  # a session and process group of its own, as Popen(start_new_session=True)
    os.setsid()
if "stdio" in req:  # a caller's own standard input, output and error
    for fd, given in enumerate(req["stdio"]):
        os.dup2(given, fd)
    for given in req["stdio"]:
        if given > 2:
            os.close(given)
else:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
os.chdir(req["cwd"])
os.environ.clear()
os.environ.update(req["env"])
sys.argv = ["imagebatch", *req["argv"]]
if req["peak_rss"]:
    import atexit, re
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak RSS counts from here: the run's own, not the forker's

    def _peak() -> None:
        hwm = re.search(r"VmHWM:\s*(\d+)", open("/proc/self/status").read()).group(1)
        print(f"peak_rss_kb={hwm}", file=sys.stderr, flush=True)
    atexit.register(_peak)  # registered first, so it runs after the command's own handlers
console()  # as the `imagebatch` command: main() on sys.argv, then exit
"""


class Forked:
    """A command a Forker started: the part of subprocess.Popen the tests use."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _end(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        """Its exit status (negative: the signal that ended it), or None while it runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to end (subprocess.TimeoutExpired after `timeout` seconds)."""
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal it, unless it has ended (its pid may be another process's by then)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: The stand-in `imagebatch` a Forker writes for other processes (`make`) to run: it hands
#: its arguments, environment, folder and standard input, output and error to the Forker,
#: which forks the command as for a test, and exits with the command's status. Python with
#: -I -S starts in a few hundredths of a CPU-second, where the real command's imports take
#: half a second; the command itself is the same code, run by the same interpreter. The
#: command is the Forker's child, not the caller's: a signal sent to make's process group
#: does not reach it (the make tests send none).
_CALLER = r"""#!{python} -IS
import array, json, os, socket, sys
conn = socket.socket(socket.AF_UNIX)
conn.connect({path!r})
request = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}})
conn.sendmsg([request.encode() + b"\n"],
             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
answer = b""
while not answer.endswith(b"\n"):
    got = conn.recv(64)
    if not got:
        sys.exit("imagebatch (forked): the forking interpreter went away")
    answer += got
sys.exit(int(answer))
"""


class Forker:
    """`imagebatch ARGV` commands run as forked children of one interpreter (see _FORKER).

    Safe to use from several threads: a reader thread hands each child its exit status.
    `command` is an `imagebatch` executable for other processes (`make IMAGEBATCH=...`) whose
    commands are forked the same way."""

    def __init__(self) -> None:
        self._home = tempfile.TemporaryDirectory(prefix="forker-")
        sock = str(Path(self._home.name, "sock"))
        self.command = Path(self._home.name, "bin", "imagebatch")
        self.command.parent.mkdir()
        self.command.write_text(_CALLER.format(python=sys.executable, path=sock))
        self.command.chmod(0o755)
        self._proc = subprocess.Popen([sys.executable, "-c", _FORKER, sock],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=cli_env(key=None), cwd=ROOT)
        deadline = time.monotonic() + 60  # the socket is bound first thing: callers may come
        while not os.path.exists(sock) and self._proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
        self._lock = threading.Lock()  # one request and its "started" answer at a time
        self._started: queue.Queue[Forked | None] = queue.Queue()
        self._children: dict[int, Forked] = {}
        self._args: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            kind, pid, *rest = raw.decode().split()
            if kind == "started":
                # registered before it is handed out: its "exit" line comes after this one
                child = self._children[int(pid)] = Forked(int(pid), self._args)
                self._started.put(child)
            else:
                self._children.pop(int(pid))._end(int(rest[0]))
        self._started.put(None)  # the forker is gone

    def spawn(self, argv: list[str], env: Mapping[str, str], cwd: Path, *, stdout: Path | str,
              stderr: Path | str, session: bool = False, peak_rss: bool = False) -> Forked:
        """Start `imagebatch ARGV` with its output in files (os.devnull to drop it); with
        `session`, in a session and process group of its own."""
        assert self._proc.stdin is not None
        with self._lock:
            self._args = ["imagebatch", *argv]
            self._proc.stdin.write((json.dumps({
                "argv": argv, "env": dict(env), "cwd": str(cwd), "stdout": str(stdout),
                "stderr": str(stderr), "session": session, "peak_rss": peak_rss}) + "\n").encode())
            self._proc.stdin.flush()
            try:
                child = self._started.get(timeout=60)
            except queue.Empty:
                child = None
            if child is None:
                raise RuntimeError(f"the forker did not start a command (exit {self._proc.poll()})")
            return child

    def run(self, argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 300,
            peak_rss: bool = False) -> subprocess.CompletedProcess[str]:
        """`imagebatch ARGV` to completion in a child, as run_cli: text output captured.

        With `peak_rss`, its peak resident set size ends stderr: `peak_rss_kb=N`."""
        with tempfile.TemporaryDirectory() as logs:
            out, err = Path(logs, "stdout"), Path(logs, "stderr")
            child = self.spawn(argv, env, cwd, stdout=out, stderr=err, peak_rss=peak_rss)
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(60)
                raise
            return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        """End the forker (end of its input: it waits for its children) and wait for it."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._home.cleanup()


def start_cli(argv: list[str], env: Mapping[str, str], cwd: Path, *,
              stdout: Path | str = os.devnull, stderr: Path | str = os.devnull,
              session: bool = False) -> Forked:
    """`imagebatch ARGV` started as a process of its own, forked by this test process's
    Forker; its output goes to the files named (by default, nowhere)."""
    with forker() as commands:
        return commands.spawn(argv, env, cwd, stdout=stdout, stderr=stderr, session=session)


def forked_imagebatch() -> str:
    """The path of an `imagebatch` for `make IMAGEBATCH=...` whose commands this test
    process's Forker forks (Forker.command): for tests of what make decides and the commands
    leave, not of the console script's own start."""
    with forker() as commands:
        return str(commands.command)


def run_forked(argv: list[str], env: Mapping[str, str], cwd: Path,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`imagebatch ARGV` to completion as a forked process of its own: run_cli without a
    fresh interpreter's imports."""
    with forker() as commands:
        return commands.run(argv, env, cwd, timeout)


_SHARED: Forker | None = None
_SHARED_LOCK = threading.Lock()


@contextlib.contextmanager
def forker() -> Iterator[Forker]:
    """The Forker of this test process, started on first use and shared by every test in it
    (one interpreter's imports for all their commands); it ends with the process."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._proc.poll() is not None:
            _SHARED = Forker()
            atexit.register(_SHARED.close)
    yield _SHARED


def load(manifest: Path) -> Plan:
    """The plan `run` makes of a manifest (the model default, as the CLI's with no env)."""
    from imagebatch.planning.manifest import load_plan

    return load_plan(str(manifest))


# -- checking what a run left -------------------------------------------------------------

def results(root: Path) -> list[dict[str, Any]]:
    """Every well-formed line of results.jsonl (a torn last line is skipped, as the store does)."""
    lines = []
    path = root / "results.jsonl"
    if path.exists():
        for raw in path.read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def decode(path: Path) -> tuple[str, tuple[int, int]]:
    """(format, size) of an image after decoding every pixel; raises if it does not decode."""
    with Image.open(path) as img:
        img.load()
        return str(img.format), img.size


def decode_tree(images: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    """Every file under `images/` but temp files, decoded fully: relative path -> (format, size).

    Raises if any of them is not a complete image (a half file under a final name)."""
    out = {}
    for p in images.rglob("*"):
        if p.is_file() and not p.name.startswith(".tmp-"):
            out[p.relative_to(images).as_posix()] = decode(p)
    return out


def every_file_decodes(images: Path) -> int:
    """Every file under `images/` but temp files is a complete image; how many there are."""
    return len(decode_tree(images))


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


def check_run(plan: Plan, root: Path, *, expect_ok: bool = True) -> dict[str, Any]:
    """What the run says agrees with what is on disk; every done image is the image asked for.

    For every job of the plan: when results.jsonl's latest record of its key is ok, the file
    exists, decodes fully, has the requested format and size, and its SHA-256 and byte count
    are the recorded ones. summary.json's counts add up to the plan. No temp file is left.
    Returns the summary.
    """
    latest = {line["key"]: line for line in results(root)}
    summary = json.loads((root / "summary.json").read_text())
    decoded = decode_tree(root / "images")  # each file decoded once, all of them
    ok = 0
    for job in plan.jobs:
        rec = latest.get(job.key)
        if rec is None or rec["status"] != "ok":
            assert not expect_ok, f"{job.path}: not done ({rec})"
            continue
        ok += 1
        data = (root / "images" / job.path).read_bytes()
        assert rec["path"] == job.path
        assert rec["sha256"] == hashlib.sha256(data).hexdigest(), job.path
        assert rec["bytes"] == len(data), job.path
        want_fmt = "JPEG" if apispec.image_format(job.request) == "jpeg" else "PNG"
        assert decoded[job.path] == (want_fmt, apispec.pixel_size(job.request)), job.path
    assert summary["planned"] == len(plan.jobs)
    assert (summary["succeeded"] + summary["skipped"] + summary["failed"]
            + summary["pending"]) == len(plan.jobs)
    if expect_ok:
        assert ok == len(plan.jobs)
        assert summary["failed"] == 0 and summary["failures"] == []
    assert not temp_files(root), temp_files(root)
    return summary


def snapshot_tree(top: Path) -> dict[str, tuple[int, int]]:
    """Every file under `top` (relative path -> (size, mtime_ns)); symlinks not followed."""
    out = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(top))] = (st.st_size, st.st_mtime_ns)
    return out


# -- secrets ------------------------------------------------------------------------------

def secret_forms(secret: str) -> list[bytes]:
    """The secret as it could leak: raw, in an Authorization header, base64 at each alignment
    (so it is found inside a longer base64 text too), URL-safe base64, hex, percent-encoded."""
    raw = secret.encode()
    forms = {raw, raw.hex().encode(), secret.replace("-", "%2D").encode()}
    for prefix in (b"", b"Bearer ", b":"):
        for text in (base64.b64encode(prefix + raw), base64.urlsafe_b64encode(prefix + raw)):
            forms.add(text.rstrip(b"="))
    # inside longer base64: the secret starting at byte offset 0, 1 or 2 of a 3-byte group
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw)
        # only the 4-character groups made of the secret's bytes alone: the first and last
        # groups mix in whatever surrounds it
        start, stop = 4 * -(-pad // 3), 4 * ((pad + len(raw)) // 3)
        forms.add(enc[start:stop])
    return sorted(forms, key=len)


def leaks(secret: str, texts: Mapping[str, str | bytes], under: Path | None = None) -> list[str]:
    """Where any form of `secret` appears: in the named texts, or in a file under `under`."""
    forms = secret_forms(secret)
    found = []
    blobs: dict[str, bytes] = {k: v.encode() if isinstance(v, str) else v for k, v in texts.items()}
    if under is not None:
        for p in under.rglob("*"):
            if p.is_file():
                blobs[str(p)] = p.read_bytes()
    for where, blob in blobs.items():
        for form in forms:
            if form in blob:
                found.append(f"{where}: {form[:24]!r}...")
    return found


__all__ = [
    "ROOT", "SECRET_KEY", "SOAK", "Embedded", "Forked", "Forker", "Served", "app_server",
    "check_run", "cli_env", "decode", "decode_tree", "embedded_server", "every_file_decodes",
    "forked_imagebatch", "forker", "in_thread", "leaks", "load", "results", "run_args",
    "run_argv", "run_cli",
    "run_forked", "scale", "secret_forms", "snapshot_tree", "start_cli", "temp_files",
]

"""Shared pieces of the stress suite (tests/test_stress_*.py).

Servers run in a background thread of the test process, so a run driven as a user would
(`python -m imagebatch run` in a subprocess, or `imagebatch.cli.main` in-process) talks to them
over real sockets while the test reads their live counters. Checks compare what a run says
(results.jsonl, summary.json) with what is on disk, decoding every image with Pillow.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
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


def run_cli(argv: list[str], env: Mapping[str, str], cwd: Path,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run to completion, capturing text output."""
    return subprocess.run(argv, check=False, env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# One interpreter that has imported imagebatch forks a child per command: the child is a
# process of its own (its own environment, cwd, stdout and stderr files, exit status, memory
# and exit handlers) without paying a fresh interpreter's imports (~0.5 CPU-s a command).
# For tests of what a command does, not of how a process starts or takes signals.
_FORKER = r"""
import json, os, sys
from imagebatch.cli import console  # what every command imports, once
# and what `run`, `status` and `sheet` import when they start (aiohttp alone, with the CA
# store it loads at import, is a quarter of a CPU-second a process); it starts no thread,
# so forking after it is safe
import imagebatch.running.run  # noqa: F401

while True:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        break
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)

# the child: from here on, as `python -m imagebatch ARGV` would run
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
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


class Forker:
    """`imagebatch ARGV` commands run as forked children of one interpreter (see _FORKER)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=cli_env(key=None),
                                      cwd=ROOT)

    def _line(self, timeout: float) -> str | None:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        return self._proc.stdout.readline() if ready else None

    def run(self, argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 300,
            peak_rss: bool = False) -> subprocess.CompletedProcess[str]:
        """`imagebatch ARGV` to completion in a child, as run_cli: text output captured.

        With `peak_rss`, its peak resident set size ends stderr: `peak_rss_kb=N`."""
        assert self._proc.stdin is not None
        with tempfile.TemporaryDirectory() as logs:
            out, err = Path(logs, "stdout"), Path(logs, "stderr")
            self._proc.stdin.write(json.dumps({
                "argv": argv, "env": dict(env), "cwd": str(cwd), "stdout": str(out),
                "stderr": str(err), "peak_rss": peak_rss}) + "\n")
            self._proc.stdin.flush()
            pid = self._line(60)
            if not pid:
                raise RuntimeError(f"the forker did not start a command (exit {self._proc.poll()})")
            code = self._line(timeout)
            if code is None:
                os.kill(int(pid), signal.SIGKILL)
                self._line(60)
                raise subprocess.TimeoutExpired(argv, timeout)
            return subprocess.CompletedProcess(argv, int(code), out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self) -> None:
        """End the forker (end of its input) and wait for it."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@contextlib.contextmanager
def forker() -> Iterator[Forker]:
    """A Forker for the `with` block (a module fixture's: one interpreter for many commands)."""
    f = Forker()
    try:
        yield f
    finally:
        f.close()


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
    "ROOT", "SECRET_KEY", "SOAK", "Embedded", "Forker", "Served", "app_server", "check_run",
    "cli_env", "decode", "decode_tree", "embedded_server", "every_file_decodes", "forker",
    "in_thread", "leaks", "load", "results", "run_argv", "run_cli", "scale", "secret_forms",
    "snapshot_tree", "temp_files",
]

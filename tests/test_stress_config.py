"""Configuration faults: DIFFUSION_URL pointing at a port nobody listens on, at a web server
that is not the image API (404 HTML for everything), or at a name that does not resolve.
Each is said clearly (naming the variable to fix), in bounded time with the default retries
and pacing, with the exit status the spec gives a bad configuration (2), and nothing saved.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from stress_helpers import SECRET_KEY, Forker, app_server, cli_env, forker, temp_files

pytestmark = pytest.mark.stress

JOBS = 12
MANIFEST = f"""\
version: 1
name: config
jobs:
  - id: kite
    prompt: "a kite over the dunes"
    output_format: jpeg
    seeds: {{start: 1, count: {JOBS}}}
"""
BOUND = 30.0  # seconds a wrong URL may cost at most, whatever the plan's size


@contextmanager
def _refused_port() -> Iterator[str]:
    # bind, learn the port, close: nothing listens there now (and nothing else will soon)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


NOT_FOUND = b"""<!DOCTYPE html><html><head><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>
"""
seen_404: list[str] = []


async def _not_the_api(request: web.Request) -> web.StreamResponse:
    seen_404.append(request.path)
    return web.Response(status=404, body=NOT_FOUND, content_type="text/html")


@contextmanager
def _unresolvable() -> Iterator[str]:
    yield "http://imagebatch-nonexistent.invalid"  # .invalid never resolves (RFC 2606)


CASES = {
    "refused": (_refused_port, "DIFFUSION_URL"),
    "not-the-api": (lambda: app_server(_not_the_api), "DIFFUSION_URL"),
    "no-such-host": (_unresolvable, "DIFFUSION_URL"),
}


@pytest.fixture(scope="module")
def commands() -> Iterator[Forker]:
    """One interpreter for the module's runs, each a forked child of it: a process of its own
    without a fresh interpreter's imports."""
    with forker() as f:
        yield f


@pytest.mark.parametrize("options", [[], ["--retries", "2", "--rpm", "0"]],
                         ids=["defaults", "retries-2-no-pacing"])
@pytest.mark.parametrize("case", list(CASES))
def test_wrong_url_is_said_clearly_in_bounded_time(commands: Forker, tmp_path: Path, case: str,
                                                    options: list[str]) -> None:
    make, variable = CASES[case]
    manifest = tmp_path / "config.yaml"
    manifest.write_text(MANIFEST)
    seen_404.clear()
    with make() as url:
        started = time.monotonic()
        proc = commands.run(["run", str(manifest), "--out", str(tmp_path / "out"), "--json",
                             *options], cli_env(url), cwd=tmp_path, timeout=600)
        wall = time.monotonic() - started
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert wall < BOUND, f"{wall:.1f} s"
    last = err.strip().splitlines()[-1]
    assert last.startswith("imagebatch: ") and variable in last, err
    assert SECRET_KEY not in err + proc.stdout
    summary = json.loads(proc.stdout)
    # nothing was made and nothing recorded failed: the jobs wait for a corrected URL
    assert (summary["succeeded"], summary["failed"], summary["pending"]) == (0, 0, JOBS)
    root = tmp_path / "out/config"
    assert not [p for p in (root / "images").rglob("*") if p.is_file()]
    assert not temp_files(root)
    if case == "not-the-api":
        assert "404" in last
        assert len(seen_404) <= 4  # stopped at the first answer (others were in flight)
    print(f"\n{case} {options}: exit 2 in {wall:.1f} s: {last}")


async def test_an_unexpected_error_in_a_worker_is_not_a_finished_run() -> None:
    # Backstop behind the client (which turns every error into a job failure): a worker
    # that dies of anything else used to be swallowed by gather(), its jobs silently never
    # run and the run exiting 0.
    from runner_helpers import make_plan

    from imagebatch.running.runner import Runner, RunSettings

    class Broken:
        requests = 0

        async def generate(self, job: object, observe: object = None,
                           sending: object = None) -> object:
            raise RuntimeError("a bug")

    class NoStore:
        def cannot_write(self, *a: object) -> None: ...
        def save(self, *a: object, **k: object) -> None: ...
        def fail(self, *a: object, **k: object) -> None: ...

    runner = Runner(Broken(), RunSettings(concurrency=2, retries=0))  # type: ignore[arg-type]
    store = NoStore()
    with pytest.raises(RuntimeError, match="a bug"):
        await runner.run([(store, job) for job in make_plan(4).jobs])  # type: ignore[misc]

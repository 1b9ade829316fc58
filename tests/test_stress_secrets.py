"""Secrets: runs with a distinctive DIFFUSION_KEY at the highest verbosity, against servers
that fault, reject the key, and echo it back in their error messages, must never show or
write the key: not raw, not base64 (at any alignment), not in an Authorization header form,
in no file under the output folder, the GitHub step summary, stdout or stderr. A rejected key
(401) is named by its variable, DIFFUSION_KEY.
"""

from __future__ import annotations

import io
import json
from base64 import b64encode
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image
from stress_helpers import (
    SECRET_KEY,
    Forker,
    app_server,
    cli_env,
    embedded_server,
    forker,
    leaks,
    secret_forms,
)

from imagebatch.service.server import FAULT_KINDS, ServerOptions

pytestmark = pytest.mark.stress

MANIFEST = """\
version: 1
name: secret
jobs:
  - id: owl
    prompt: "an owl on a fence post"
    output_format: jpeg
    aspect_ratio: "9:21"
    seeds: {start: 1, count: 16}
"""
VERBOSE = ["-v", "-v"]  # -v counts; two is the most any command reads


@pytest.fixture(scope="module")
def commands() -> Iterator[Forker]:
    """One interpreter for the module's commands, each run in a forked child of it: a process
    of its own (environment, output, files) without a fresh interpreter's imports."""
    with forker() as f:
        yield f


def _run(manifest: Path, out: Path, *options: str) -> list[str]:
    """The arguments of `imagebatch run MANIFEST --out OUT OPTIONS...`."""
    return ["run", str(manifest), "--out", str(out), *options]


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(MANIFEST)
    return manifest, tmp_path / "out", tmp_path / "step-summary.md"


def _scan(tmp_path: Path, texts: dict[str, str], secret: str = SECRET_KEY) -> None:
    found = leaks(secret, texts, under=tmp_path)
    assert not found, found


def test_scanner_finds_every_form_it_claims() -> None:
    # the scan is only as good as its forms: each must match the key as it would leak
    for blob in (SECRET_KEY.encode(), f"Authorization: Bearer {SECRET_KEY}".encode(),
                 b64encode(b"xy" + SECRET_KEY.encode() + b"z"),
                 b64encode(f"Bearer {SECRET_KEY}".encode())):
        assert any(form in blob for form in secret_forms(SECRET_KEY)), blob


def test_faulty_run_status_sheet_show_never_show_the_key(commands: Forker, tmp_path: Path) -> None:
    manifest, out, step = _setup(tmp_path)
    options = ServerOptions(key=SECRET_KEY, fail_rate=0.5, faults=FAULT_KINDS, fault_seed=7,
                            fault_attempts=1, stall_seconds=3.0, flat=True)
    texts: dict[str, str] = {}
    with embedded_server(options) as srv:
        env = cli_env(srv.url, GITHUB_STEP_SUMMARY=str(step))
        run = commands.run(_run(manifest, out, "--rpm", "0", "--timeout", "1.5", *VERBOSE),
                      env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert srv.stats.faults  # the run did meet faults, and their messages
        texts.update(run_stdout=run.stdout, run_stderr=run.stderr)
        again = commands.run(_run(manifest, out, "--rpm", "0", "--json", *VERBOSE), env,
                        cwd=tmp_path)
        assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 16
        texts.update(rerun_stdout=again.stdout, rerun_stderr=again.stderr)
    image = next((out / "secret/images").rglob("*.jpg"))
    for name, argv in {
        "status": ["status", str(manifest), "--out", str(out), "--json", *VERBOSE],
        "sheet": ["sheet", str(manifest), "--out", str(out)],
        "show": ["show", str(image)],
    }.items():
        proc = commands.run(argv,
                       cli_env("http://127.0.0.1:9", GITHUB_STEP_SUMMARY=str(step)),
                       cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        texts.update({f"{name}_stdout": proc.stdout, f"{name}_stderr": proc.stderr})
    assert step.exists()
    _scan(tmp_path, texts)


def test_401_names_the_variable_never_the_key(commands: Forker, tmp_path: Path) -> None:
    manifest, out, step = _setup(tmp_path)
    with embedded_server(ServerOptions(flat=True, key="inf-the-right-one")) as srv:
        proc = commands.run(_run(manifest, out, "--rpm", "0", *VERBOSE),
                       cli_env(srv.url, GITHUB_STEP_SUMMARY=str(step)), cwd=tmp_path)
        assert srv.stats.by_status[401] >= 1
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "401" in last and "check DIFFUSION_KEY" in last, last
    _scan(tmp_path, {"stdout": proc.stdout, "stderr": proc.stderr})


Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _echo(status: int, html: bool = False) -> Reply:
    """A server that reflects the caller's Authorization header in its answer."""
    async def reply(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if html:
            return web.Response(status=status, content_type="text/html",
                                text=f"<html><body>Request with {auth} failed</body></html>")
        return web.json_response({"error": {"code": status, "type": "x",
                                            "message": f"rejected {auth} (key {auth[7:]})"}},
                                 status=status)
    return reply


@pytest.mark.parametrize("status,html", [(401, False), (400, False), (403, False),
                                         (500, False), (200, True), (502, True)],
                         ids=["401", "400", "403", "500", "200-html", "502-html"])
def test_a_server_echoing_the_key_does_not_make_us_repeat_it(commands: Forker, tmp_path: Path,
                                                             status: int, html: bool) -> None:
    manifest, out, step = _setup(tmp_path)
    with app_server(_echo(status, html)) as url:
        proc = commands.run(_run(manifest, out, "--rpm", "0", "--retries", "1", *VERBOSE),
                       cli_env(url, GITHUB_STEP_SUMMARY=str(step)), cwd=tmp_path)
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    if status == 401:
        assert proc.returncode == 2 and "check DIFFUSION_KEY" in proc.stderr
    elif not html:
        # the server's message is kept (it is what explains the failure), minus the key
        summary = json.loads((out / "secret/summary.json").read_text())
        assert summary["failures"] and "rejected Bearer ***" in summary["failures"][0]["reason"]
    _scan(tmp_path, {"stdout": proc.stdout, "stderr": proc.stderr})


URL_SECRET = "inf-URLSECRET-0d9a7c31e5"


def test_credentials_in_the_url_are_neither_sent_nor_shown(commands: Forker,
                                                           tmp_path: Path) -> None:
    manifest, out, step = _setup(tmp_path)
    seen: list[str] = []
    buf = io.BytesIO()
    Image.new("RGB", (640, 1536), (90, 90, 90)).save(buf, format="JPEG")
    body = {"created": 1, "data": [{"b64_json": b64encode(buf.getvalue()).decode()}]}

    async def reply(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(body)

    with app_server(reply) as url:
        url = url.replace("http://", f"http://owner:{URL_SECRET}@")
        proc = commands.run(_run(manifest, out, "--rpm", "0", *VERBOSE),
                       cli_env(url, GITHUB_STEP_SUMMARY=str(step)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert seen and set(seen) == {f"Bearer {SECRET_KEY}"}
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    _scan(tmp_path, texts)
    _scan(tmp_path, texts, URL_SECRET)

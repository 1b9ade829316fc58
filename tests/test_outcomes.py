"""What each answer comes to, counted at the embedded server: an answer a retry cannot change
(content filtered for a fixed seed, 403 content_moderation, 422, 400) is paid for once and
not sent again until the request changes or `run --retry-failed`; an image at another size
is kept and flagged after one request; a 402 (out of credits) stops the run or drops the
member; and only requests that reached the wire are counted, spent and priced."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

from PIL import Image

from pipeline.commands.status import status_command
from pipeline.planning import config
from pipeline.planning.manifest import load_plan
from pipeline.running.options import RunOptions
from pipeline.running.run import run_plans
from pipeline.running.summary import text
from pipeline.service.server import ServerOptions, running_server

SKEY = "sk-OUTCOMES-5e4d3c2b1a-test"
HKEY = "inf-OUTCOMES-1a2b3c4d5e-test"


def _manifest(tmp_path: Path, jobs: str, name: str = "o") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\nname: {name}\njobs:\n{jobs}", encoding="utf-8")
    return path


def _records(tmp_path: Path, name: str = "o") -> list[dict]:
    lines = (tmp_path / "out" / name / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _status(tmp_path: Path, path: Path, url: str, *, as_json: bool = False) -> str:
    env = {"DIFFUSION_URL": url, "DIFFUSION_KEY": SKEY, "DIFFUSION_PROVIDER": "stability"}
    out = io.StringIO()
    assert status_command(str(path), out_dir=tmp_path / "out", env=env, out=out,
                          as_json=as_json) == 0
    return out.getvalue()


async def _run(tmp_path: Path, path: Path, conns, *, providers=("stability",), **kw):
    plan = load_plan(str(path), providers=providers)
    kw.setdefault("rpm", 0.0)
    kw.setdefault("backoff_base", 0.01)
    opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, **kw)
    return await run_plans([plan], conns, opts, io.StringIO(), env={})


def _stability(srv) -> config.Connection:
    return config.Connection("DIFFUSION", srv.url, SKEY, provider="stability")


# -- only what reaches the wire is counted, spent and priced ---------------------------------

def _png(size=(896, 1088), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_jobs_refused_before_sending_spend_nothing_and_cost_nothing(tmp_path):
    (tmp_path / "pick.png").write_bytes(_png())
    path = _manifest(tmp_path, "  - id: more\n    prompt: a fox\n    image: pick.png\n"
                               "    strength: 0.3\n    seeds: [1, 2]\n"
                               "  - id: fox\n    prompt: a fox\n    seeds: [3, 4, 5]\n")
    plan = load_plan(str(path), providers=("stability",))
    # the input image changes after planning: its jobs are refused when they would be sent
    (tmp_path / "pick.png").write_bytes(_png(color=(0, 0, 255)))

    async def scenario():
        async with running_server(ServerOptions(key=SKEY, workers=1)) as srv:
            opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=0.0,
                              concurrency=1, budget=3, price="0.40")
            report = await run_plans([plan], [_stability(srv)], opts, io.StringIO(), env={})
            return report, srv.stats.requests

    report, received = asyncio.run(scenario())
    (rep,) = report.plans
    assert received == 3 == rep.sent == report.sent  # the three fox jobs, nothing else
    assert (rep.succeeded, rep.failed, rep.pending) == (3, 2, 0)
    assert all("changed since the plan was made" in f.reason for f in rep.failures)
    assert not report.stopped_by_budget  # the budget bought every sendable job
    assert "3 image requests sent, 3 images made, cost $1.20 at $0.40 an image" in text(report)
    doc = json.loads((tmp_path / "out/o/summary.json").read_text())
    assert (doc["image_requests"], doc["cost"], doc["requests"]) == (3, "1.20", 3)
    assert doc["budget"]["sent"] == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_run_that_never_connects_reports_no_request_sent(tmp_path):
    path = _manifest(tmp_path, "  - id: a\n    prompt: a fox\n    seeds: {start: 1, count: 4}\n")
    conn = config.Connection("DIFFUSION", f"http://127.0.0.1:{_closed_port()}", HKEY)
    report = asyncio.run(_run(tmp_path, path, [conn], providers=("heroku",), retries=2,
                              price="0.08"))
    assert report.config_error is not None and "Connection refused" in \
        report.config_error.message
    (plan,) = report.plans
    assert (plan.sent, plan.requests, plan.pending) == (0, 0, 4)
    assert "0 image requests sent, 0 images made, cost $0.00 at $0.08 an image" in text(report)

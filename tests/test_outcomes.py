"""What each answer comes to, counted at the embedded server: an answer a retry cannot change
(content filtered for a fixed seed, 403 content_moderation, 422, 400) is paid for once and
not sent again until the request changes or `run --retry-failed`; an image at another size
is kept and flagged after one request; a 402 (out of credits) stops the run or drops the
member; and only requests that reached the wire are counted, spent and priced."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from pathlib import Path

from PIL import Image

from pipeline.cli import report_run
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


# -- 402: the key's account is out of credits -------------------------------------------------

def test_a_402_stops_the_run_after_one_request_naming_the_key_variable(tmp_path):
    path = _manifest(tmp_path, "  - id: a\n    prompt: a fox\n    seeds: {start: 1, count: 5}\n")

    async def scenario():
        options = ServerOptions(key=SKEY, workers=1, fail_rate=1.0, faults=("402",))
        async with running_server(options) as srv:
            conn = config.Connection("STABILITY", srv.url, SKEY, provider="stability",
                                     key_name="STABILITY_API_KEY")
            report = await _run(tmp_path, path, [conn], concurrency=1)
            return report, srv.stats

    report, stats = asyncio.run(scenario())
    assert stats.requests == 1 and stats.by_status[402] == 1
    (plan,) = report.plans
    assert (plan.failed, plan.pending, plan.sent) == (0, 5, 1)  # pending, not failed
    err = io.StringIO()
    assert report_run(report, as_json=False, out=io.StringIO(), err=err) == 2
    assert "out of credits (402" in err.getvalue() and "STABILITY_API_KEY" in err.getvalue()
    assert SKEY not in err.getvalue()
    assert not (tmp_path / "out/o/results.jsonl").read_text()  # nothing recorded failed


def test_a_402_drops_that_member_of_a_pool_and_the_others_go_on(tmp_path):
    path = _manifest(tmp_path, "  - id: a\n    prompt: a fox\n    seeds: {start: 1, count: 6}\n")
    keys = {"POOLA": SKEY, "POOLB": SKEY.replace("OUTCOMES", "SECONDKEY")}

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            broke = await stack.enter_async_context(running_server(ServerOptions(
                key=keys["POOLA"], workers=1, fail_rate=1.0, faults=("402",))))
            good = await stack.enter_async_context(running_server(ServerOptions(
                key=keys["POOLB"], workers=1)))
            conns = [config.Connection(p, s.url, keys[p], provider="stability")
                     for p, s in (("POOLA", broke), ("POOLB", good))]
            report = await _run(tmp_path, path, conns, concurrency=1)
            return report, broke.stats, good.stats

    report, broke, good = asyncio.run(scenario())
    assert broke.requests == 1 and good.requests == 6
    (plan,) = report.plans
    assert (plan.succeeded, plan.failed, plan.pending) == (6, 0, 0)
    assert report.config_error is None
    (dropped,) = [m for m in report.members if m.dropped]
    assert dropped.prefix == "POOLA" and "out of credits" in dropped.dropped
    assert "POOLA_KEY" in dropped.dropped


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

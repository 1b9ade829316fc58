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

import pytest
from PIL import Image
from runner_helpers import make_job

from imagebatch.cli import report_run
from imagebatch.commands.status import status_command
from imagebatch.errors import AuthError, PermanentApiError, RetryableApiError
from imagebatch.planning.manifest import load_plan
from imagebatch.providers import connect
from imagebatch.providers.heroku import HEROKU
from imagebatch.providers.stability import STABILITY
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.running.summary import markdown, text
from imagebatch.service.server import ServerOptions, running_server

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


def _counts(tmp_path: Path, path: Path, url: str) -> dict:
    """`plan --counts-json` as the environment of `_status` sees the outputs."""
    from imagebatch.commands.preview import plan_command

    env = {"DIFFUSION_URL": url, "DIFFUSION_KEY": SKEY, "DIFFUSION_PROVIDER": "stability"}
    out = io.StringIO()
    assert plan_command(str(path), out_dir=tmp_path / "out", env=env, out=out,
                        counts_json=True, price="0.08") == 0
    return json.loads(out.getvalue())


async def _run(tmp_path: Path, path: Path, conns, *, providers=(STABILITY,), **kw):
    plan = load_plan(str(path), providers=providers)
    kw.setdefault("rpm", 0.0)
    kw.setdefault("backoff_base", 0.01)
    opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, **kw)
    return await run_plans([plan], conns, opts, io.StringIO(), env={})


def _stability(srv) -> connect.Connection:
    return connect.Connection("DIFFUSION", srv.url, SKEY, provider=STABILITY)


# -- an answer a retry cannot change is paid for once -------------------------------------------

FILTERED = ("  - id: fox\n    prompt: a fox\n    seeds: [1, 2]\n"
            "  - id: veiled\n    prompt: \"[[filtered]] a fox\"\n    seeds: [3]\n")


def test_a_content_filtered_job_is_sent_once_across_runs_and_again_when_asked(tmp_path):
    path = _manifest(tmp_path, FILTERED)

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=SKEY)) as srv:
            conn, seen = _stability(srv), []
            for retry_failed in (False, False, True):
                report = await _run(tmp_path, path, [conn], retry_failed=retry_failed)
                seen.append((report, srv.stats.requests))
            status = _status(tmp_path, path, srv.url)
            as_json = json.loads(_status(tmp_path, path, srv.url, as_json=True))
            return seen, status, as_json, _counts(tmp_path, path, srv.url)

    [(first, n1), (second, n2), (asked, n3)], status, as_json, counts = asyncio.run(scenario())
    # plan counts what run sends: the held-back job is neither to send nor priced
    assert (counts["done"], counts["held"], counts["to_send"]) == (2, 1, 0), counts
    assert (n1, n2, n3) == (3, 3, 4)  # sent, not sent again, sent again when asked
    (p1,), (p2,), (p3,) = first.plans, second.plans, asked.plans
    assert (p1.succeeded, p1.failed, p1.held, p1.sent) == (2, 1, 0, 3)
    assert (p2.skipped, p2.failed, p2.held, p2.pending, p2.sent) == (2, 0, 1, 0, 0)
    assert (p3.skipped, p3.failed, p3.held, p3.sent) == (2, 1, 0, 1)
    veiled = [r for r in _records(tmp_path) if r["path"] == "veiled/3.png"]
    assert len(veiled) == 2 and all(r["final"] is True and r["status"] == "failed"
                                    for r in veiled)
    assert all("final" not in r for r in _records(tmp_path) if r["status"] == "ok")
    # the summary says how many were held back and how to send them; still a failed job
    summary = text(second)
    assert "1 not sent again" in summary
    assert "1 failed job(s) not sent again" in summary and "--retry-failed" in summary
    assert "**Not sent again**" in markdown(second)
    doc = json.loads((tmp_path / "out/o/summary.json").read_text())
    assert doc["held"] == 0  # the last run (--retry-failed) held nothing back
    assert report_run(second, as_json=False, out=io.StringIO(), err=io.StringIO()) == 1
    # status lists it with its reason
    assert "1 failed job(s) that run does not send again" in status
    assert "  veiled/3.png: content filtered" in status
    assert as_json["failed"] == 1 and as_json["held"][0]["path"] == "veiled/3.png"
    assert "content filtered" in as_json["held"][0]["reason"]


def test_a_changed_request_is_a_new_key_and_is_sent(tmp_path):
    path = _manifest(tmp_path, FILTERED)

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=SKEY)) as srv:
            await _run(tmp_path, path, [_stability(srv)])
            sent = srv.stats.requests
            path.write_text(path.read_text().replace("[[filtered]] a fox", "a fox in snow"))
            report = await _run(tmp_path, path, [_stability(srv)])
            return sent, srv.stats.requests, report

    sent, after, report = asyncio.run(scenario())
    assert (sent, after) == (3, 4)
    (plan,) = report.plans
    assert (plan.skipped, plan.succeeded, plan.held) == (2, 1, 0)


def test_which_answers_are_final():
    from imagebatch.running.runner import final

    filtered = PermanentApiError("content filtered", status=200, kind="content_filtered")
    assert final(make_job(seed=5), filtered)
    # seed 0 asks for a new random seed each time: another draw may pass the filter (a
    # manifest refuses seed 0; a job built another way may have it)
    assert not final(make_job(seed=0), filtered)
    for status, kind in ((400, "permanent"), (413, "permanent"), (422, "permanent"),
                         (403, "moderation")):
        exc = PermanentApiError("refused", status=status, kind=kind)
        assert final(make_job(seed=5), exc) and final(make_job(seed=0), exc)
    for exc in (PermanentApiError("no access", status=403, kind="permanent"),  # Heroku's key
                PermanentApiError("not found", status=404, kind="permanent"),
                PermanentApiError("input image changed", kind="input_image"),
                AuthError("out of credits", status=402, kind="payment"),
                RetryableApiError("HTTP 500", status=500),
                RetryableApiError("image is JPEG, asked for png", kind="wrong_format")):
        assert not final(make_job(seed=5), exc), exc


@pytest.mark.parametrize(("script", "prompt", "reason"), [
    ({1: "moderation"}, "a fox", "content moderation"),
    ({1: "422"}, "a fox", "English is the only supported language"),
    ({}, "a fox [[fail:400]]", "requested by [[fail:400]]"),
])
def test_a_refusal_of_the_request_is_sent_once_across_runs(tmp_path, script, prompt, reason):
    path = _manifest(tmp_path, f"  - id: a\n    prompt: \"{prompt}\"\n    seeds: [7]\n")

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=SKEY, script=script)) as srv:
            first = await _run(tmp_path, path, [_stability(srv)])
            second = await _run(tmp_path, path, [_stability(srv)])
            return first, second, srv.stats.requests

    first, second, sent = asyncio.run(scenario())
    assert sent == 1
    assert reason in first.plans[0].failures[0].reason
    assert (second.plans[0].held, second.plans[0].sent) == (1, 0)
    (record,) = _records(tmp_path)
    assert record["final"] is True


def test_a_transient_failure_is_still_sent_again_by_the_next_run(tmp_path):
    path = _manifest(tmp_path, "  - id: a\n    prompt: a fox\n    seeds: [7]\n")

    async def scenario():
        options = ServerOptions(flat=True, key=SKEY, script={1: "500", 2: "500"})
        async with running_server(options) as srv:
            first = await _run(tmp_path, path, [_stability(srv)], retries=1)
            second = await _run(tmp_path, path, [_stability(srv)], retries=1)
            return first, second, srv.stats.requests

    first, second, sent = asyncio.run(scenario())
    assert sent == 3 and first.plans[0].failed == 1
    assert (second.plans[0].succeeded, second.plans[0].held) == (1, 0)


# -- an image at another size is the provider's answer: kept, flagged -------------------------

def test_an_image_at_another_size_is_kept_and_flagged_after_one_request(tmp_path):
    path = _manifest(tmp_path, "  - id: a\n    prompt: a fox\n    aspect_ratio: \"3:2\"\n"
                               "    seeds: [7, 8]\n")

    async def scenario():
        options = ServerOptions(flat=True, key=SKEY, script={1: "wrong-size", 2: "wrong-format"})
        async with running_server(options) as srv:
            first = await _run(tmp_path, path, [_stability(srv)], concurrency=1)
            sent = srv.stats.requests
            second = await _run(tmp_path, path, [_stability(srv)])
            status = _status(tmp_path, path, srv.url)
            return first, sent, second, srv.stats.requests, status

    first, sent, second, resent, status = asyncio.run(scenario())
    # one request for the other size (kept), two for the wrong format (retried)
    assert sent == 3 and resent == 3
    (plan,) = first.plans
    assert (plan.succeeded, plan.failed, plan.flagged) == (2, 0, 1)
    assert second.plans[0].skipped == 2  # done: the kept image is not made again
    by_path = {r["path"]: r for r in _records(tmp_path)}
    assert by_path["a/7.png"]["flag"] == "image is 1024x1024, not the 3:2 asked for"
    assert by_path["a/7.png"]["attempts"] == 1 and "flag" not in by_path["a/8.png"]
    with Image.open(tmp_path / "out/o/images/a/7.png") as img:
        img.load()
        assert (img.format, img.size) == ("PNG", (1024, 1024))
    with Image.open(tmp_path / "out/o/images/a/8.png") as img:
        img.load()
        assert (img.format, img.size) == ("PNG", (1216, 832))
    assert "1 image(s) made at another size than asked, kept" in text(first)
    assert "1 image(s) made at another size than asked, kept:" in status
    assert "  a/7.png: image is 1024x1024, not the 3:2 asked for" in status


# -- 402: the key's account is out of credits -------------------------------------------------

def test_a_402_stops_the_run_after_one_request_naming_the_key_variable(tmp_path):
    path = _manifest(tmp_path, "  - id: a\n    prompt: a fox\n    seeds: {start: 1, count: 5}\n")

    async def scenario():
        options = ServerOptions(flat=True, key=SKEY, fail_rate=1.0, faults=("402",))
        async with running_server(options) as srv:
            conn = connect.Connection("STABILITY", srv.url, SKEY, provider=STABILITY,
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
            broke = await stack.enter_async_context(running_server(ServerOptions(flat=True,
                key=keys["POOLA"], workers=1, fail_rate=1.0, faults=("402",))))
            good = await stack.enter_async_context(running_server(ServerOptions(flat=True,
                key=keys["POOLB"], workers=1)))
            conns = [connect.Connection(p, s.url, keys[p], provider=STABILITY)
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
    plan = load_plan(str(path), providers=(STABILITY,))
    # the input image changes after planning: its jobs are refused when they would be sent
    (tmp_path / "pick.png").write_bytes(_png(color=(0, 0, 255)))

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=SKEY)) as srv:
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
    conn = connect.Connection("DIFFUSION", f"http://127.0.0.1:{_closed_port()}", HKEY)
    report = asyncio.run(_run(tmp_path, path, [conn], providers=(HEROKU,), retries=2,
                              price="0.08"))
    assert report.config_error is not None and "Connection refused" in \
        report.config_error.message
    (plan,) = report.plans
    assert (plan.sent, plan.requests, plan.pending) == (0, 0, 4)
    assert "0 image requests sent, 0 images made, cost $0.00 at $0.08 an image" in text(report)

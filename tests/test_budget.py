"""Budgets: `run --budget N` / `--budget-cost AMOUNT` send at most that many image requests
(retries and moved attempts included, counted at the server), leave the rest pending, exit 3,
and a re-run finishes; bad budgets are refused before anything is sent."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import stat
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from PIL import Image
from runner_helpers import KEY, Clock, make_plan
from sweep_helpers import MANIFEST

from imagebatch.cli import main, report_run
from imagebatch.commands import scaffold
from imagebatch.errors import RetryableApiError, UsageError
from imagebatch.planning.budget import BUDGET_EXIT, budget_from
from imagebatch.planning.costs import parse_amount
from imagebatch.providers import connect
from imagebatch.running.client import GeneratedImage
from imagebatch.running.options import RunOptions
from imagebatch.running.retry import Pacer
from imagebatch.running.run import run_plans
from imagebatch.running.runner import Member, Runner, RunSettings
from imagebatch.running.summary import markdown, run_json, text
from imagebatch.service.server import ServerOptions, running_server

ROOT = Path(__file__).resolve().parent.parent


# -- the budget itself ----------------------------------------------------------------------

def test_no_options_no_budget():
    assert budget_from(None, None, None) is None


def test_a_request_budget_is_that_many_requests():
    budget = budget_from(5, None, None)
    assert budget is not None and budget.requests == 5 and budget.describe() == "--budget 5"


def test_a_cost_budget_buys_whole_requests_at_the_price():
    price = parse_amount("0.08", "--price")
    budget = budget_from(None, "1.00", price)
    assert budget is not None and budget.requests == 12  # 12 x 0.08 = 0.96; a 13th is 1.04
    assert budget.describe() == "--budget-cost $1.00 (12 requests at $0.08)"
    assert budget_from(None, "$0.24", price).requests == 3  # exactly: Decimals, not floats


def test_both_budgets_the_smaller_wins():
    price = parse_amount("0.10", "--price")
    assert budget_from(4, "1", price).requests == 4
    assert budget_from(40, "1", price).requests == 10


@pytest.mark.parametrize(("cost", "price"), [
    ("USD 1", "$0.08"), ("1 USD", "$0.08"), ("$1", "0.08 USD"), ("€1", "0.08 EUR"),
    ("1", "£0.08"),
])
def test_one_currency_written_two_ways_is_one_currency(cost, price):
    # `$` and `USD` are one currency: the budget is the price's, 12 images of $0.08 in $1
    budget = budget_from(None, cost, parse_amount(price, "--price"))
    assert budget.requests == 12


@pytest.mark.parametrize(("requests", "cost", "price", "message"), [
    (0, None, None, "at least 1"),
    (-3, None, None, "at least 1"),
    (None, "1", None, "needs the price of one image"),
    (None, "abc", "0.08", "not an amount of money"),
    (None, "0", "0.08", "more than 0"),
    (None, "0.05", "0.08", "does not buy one image"),
    (None, "1", "0", "caps nothing"),
    (None, "10 EUR", "$0.08", "not in the currency"),
])
def test_bad_budgets_are_refused(requests, cost, price, message):
    with pytest.raises(UsageError, match=message):
        budget_from(requests, cost, parse_amount(price, "--price") if price else None)


# -- the runner, against a fake client on a fake clock ----------------------------------------

class FlakyClient:
    """Fails every request whose number is in `fail` (retryable), else makes an image."""

    def __init__(self, fail: set[int]) -> None:
        self.fail, self.requests = fail, 0

    async def generate(self, job, observe=None, sending=None):
        if sending is not None:
            sending()  # as the client does, just before its request goes out
        self.requests += 1
        number = self.requests
        await asyncio.sleep(0)
        if number in self.fail:
            raise RetryableApiError("server error (500)", status=500)
        return GeneratedImage(data=b"img", format="png", width=1, height=1)


class Store:
    def __init__(self) -> None:
        self.saved: list[str] = []
        self.failed: list[str] = []

    def cannot_write(self, job):
        return None

    def save(self, job, data, *, attempts, seconds, created, member=None):
        self.saved.append(job.key)

    def fail(self, job, error, *, attempts, seconds, member=None):
        self.failed.append(job.key)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_runner_sends_exactly_the_budget_retries_included(concurrency):
    clock = Clock()
    client = FlakyClient(fail={1, 2, 4})
    runner = Runner(client, RunSettings(concurrency=concurrency, retries=3), sleep=clock.sleep,
                    clock=clock, rng=lambda: 0.0, budget=6)
    store = Store()
    jobs = make_plan(10).jobs
    state = asyncio.run(runner.run([(store, j) for j in jobs]))
    assert client.requests == 6 and state.sent == 6 and state.budget_reached
    assert not state.interrupted
    assert store.failed == []  # a job cut short by the budget is not failed: it is pending
    assert len(store.saved) == 3  # 6 requests, 3 of them faults
    assert state.tally(store).sent == 6


def test_a_budget_larger_than_the_work_is_not_reached():
    clock = Clock()
    client = FlakyClient(fail=set())
    runner = Runner(client, RunSettings(concurrency=2), sleep=clock.sleep, clock=clock,
                    budget=50)
    store = Store()
    state = asyncio.run(runner.run([(store, j) for j in make_plan(4).jobs]))
    assert client.requests == 4 and not state.budget_reached and len(store.saved) == 4


def test_attempts_a_pool_moves_to_another_member_count_against_the_budget():
    clock = Clock()

    class Throttled:
        def __init__(self) -> None:
            self.requests = 0

        async def generate(self, job, observe=None, sending=None):
            if sending is not None:
                sending()
            self.requests += 1
            await asyncio.sleep(0)
            raise RetryableApiError("too many requests (429)", status=429, retry_after=30.0)

    busy, good = Throttled(), FlakyClient(fail=set())
    members = [Member(busy, Pacer(None, clock=clock, sleep=clock.sleep), prefix="A"),
               Member(good, Pacer(None, clock=clock, sleep=clock.sleep), prefix="B")]
    runner = Runner(members, RunSettings(concurrency=2), sleep=clock.sleep, clock=clock,
                    rng=lambda: 0.0, budget=5)
    store = Store()
    state = asyncio.run(runner.run([(store, j) for j in make_plan(8).jobs]))
    assert busy.requests >= 1  # the 429s were sent, and each one counts
    assert busy.requests + good.requests == 5 == state.sent
    assert len(store.saved) == good.requests and store.failed == []


# -- whole runs against the embedded server ----------------------------------------------------

async def _run(tmp_path: Path, server: ServerOptions, n: int, **kw):
    async with running_server(server) as srv:
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("rpm", 0.0)  # no pacing of our own: the server is local
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, **kw)
        report = await run_plans([make_plan(n)], conn, opts, io.StringIO(), env={})
        return report, srv.stats


def _summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out/demo/summary.json").read_text())


@pytest.mark.parametrize("concurrency", [1, 3])
def test_exactly_n_requests_reach_the_server_even_with_faults(tmp_path, concurrency):
    script = {1: "500", 2: "reset", 4: "503"}
    report, stats = asyncio.run(_run(
        tmp_path, ServerOptions(flat=True, key=KEY, script=script), 10, budget=7,
        concurrency=concurrency, retries=4))
    assert stats.requests == 7  # counted at the server
    (plan,) = report.plans
    assert plan.sent == 7 and report.budget_reached and report.stopped_by_budget
    assert plan.succeeded == 4 and plan.failed == 0 and plan.pending == 6
    doc = _summary(tmp_path)
    assert doc["image_requests"] == 7 and doc["pending"] == 6 and doc["stopped_by_budget"]
    assert doc["budget"] == {"requests": 7, "asked_requests": 7, "asked_cost": None,
                             "sent": 7, "reached": True}
    images = sorted((tmp_path / "out/demo/images").rglob("*.png"))
    assert len(images) == 4
    for path in images:
        with Image.open(path) as img:
            img.load()
    out, err = io.StringIO(), io.StringIO()
    assert report_run(report, as_json=False, out=out, err=err) == BUDGET_EXIT == 3
    assert "budget reached (--budget 7): 7 of 7 image requests sent; 6 job(s) left pending" \
        in out.getvalue()
    assert "the budget is spent" in err.getvalue()


def test_a_rerun_finishes_and_pays_nothing_twice(tmp_path):
    server = ServerOptions(flat=True, key=KEY, script={2: "500"})

    async def both():
        async with running_server(server) as srv:
            conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
            base = RunOptions(manifests=(), out=tmp_path / "out", post=False,
                              backoff_base=0.01, concurrency=2, price="0.08", rpm=0.0)
            first = await run_plans([make_plan(8)], conn,
                                    RunOptions(**{**_fields(base), "budget": 3}),
                                    io.StringIO(), env={})
            sent_first = srv.stats.requests
            second = await run_plans([make_plan(8)], conn, base, io.StringIO(), env={})
            return first, sent_first, second, srv.stats.requests

    first, sent_first, second, sent_all = asyncio.run(both())
    assert sent_first == 3 and first.stopped_by_budget
    (p1,), (p2,) = first.plans, second.plans
    assert p1.succeeded == 2 and p1.pending == 6
    assert p2.skipped == 2 and p2.succeeded == 6 and p2.pending == 0 and p2.failed == 0
    assert sent_all - sent_first == 6 == p2.sent  # only what was left, no fault this time
    assert not second.stopped_by_budget
    assert report_run(second, as_json=False, out=io.StringIO(), err=io.StringIO()) == 0
    doc = _summary(tmp_path)
    assert (doc["price"], doc["cost"], doc["budget"]) == ("0.08", "0.48", None)


def _fields(opts: RunOptions) -> dict:
    return {f: getattr(opts, f) for f in opts.__dataclass_fields__}


def test_a_cost_budget_sends_what_it_buys(tmp_path):
    report, stats = asyncio.run(_run(
        tmp_path, ServerOptions(flat=True, key=KEY), 6, budget_cost="$0.25", price="0.08"))
    assert stats.requests == 3  # 3 x 0.08 = 0.24 <= 0.25
    assert "cost $0.24 at $0.08 an image" in text(report)
    assert "--budget-cost $0.25 (3 requests at $0.08)" in text(report)
    doc = json.loads(run_json(report))
    assert doc["cost"] == "0.24" and doc["budget"]["asked_cost"] == "0.25"
    assert "**Budget reached**" in markdown(report)


def test_a_pool_counts_the_attempts_it_moves(tmp_path):
    keys = {"POOLA": "inf-pool-aaaa-1111", "POOLB": "inf-pool-bbbb-2222"}

    async def go():
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(running_server(ServerOptions(flat=True,
                key=keys["POOLA"], workers=1, script={1: "429", 2: "429", 3: "429"})))
            b = await stack.enter_async_context(running_server(ServerOptions(flat=True,
                key=keys["POOLB"], workers=1)))
            conns = [connect.Connection(prefix=p, url=s.url, key=keys[p])
                     for p, s in (("POOLA", a), ("POOLB", b))]
            opts = RunOptions(manifests=(), out=tmp_path / "out", post=False,
                              backoff_base=0.01, concurrency=2, budget=6, rpm=0.0)
            report = await run_plans([make_plan(10)], conns, opts, io.StringIO(), env={})
            return report, a.stats, b.stats

    report, a, b = asyncio.run(go())
    assert a.requests + b.requests == 6 == report.sent
    assert a.by_status[429] >= 1
    (plan,) = report.plans
    assert plan.succeeded == 6 - a.by_status[429] and plan.failed == 0
    assert plan.pending == 10 - plan.succeeded


# -- through the command line -------------------------------------------------------------------

def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(MANIFEST)
    return path


def test_the_command_line_stops_at_the_budget_and_post_processes(tmp_path, capsys):
    manifest, out = _manifest(tmp_path), tmp_path / "outputs"
    code = main(["run", str(manifest), "--out", str(out), "--budget", "3", "--price", "$0.08"])
    printed = capsys.readouterr()
    assert code == 3, printed.err
    assert "3 image requests sent, 3 images made, cost $0.24 at $0.08 an image" in printed.out
    assert "5 job(s) left pending" in printed.out
    assert (out / "sweep/index.html").is_file()  # post-processing still happened
    assert len(list((out / "sweep/thumbs").rglob("*.jpg"))) == 3
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 5
    assert main(["run", str(manifest), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["skipped"], doc["succeeded"], doc["image_requests"]) == (3, 5, 5)
    assert doc["cost"] is None  # no price: unknown, never 0


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--budget", "0"], {}, "must be at least 1"),
    (["--budget", "-2"], {}, "must be at least 1"),
    (["--budget", "two"], {}, "is not a whole number"),
    (["--budget-cost", "1"], {}, "--budget-cost needs the price of one image"),
    (["--budget-cost", "0", "--price", "0.08"], {}, "more than 0"),
    (["--price", "cheap"], {}, "--price: 'cheap' is not an amount of money"),
    ([], {"IMAGEBATCH_PRICE": "1,5"}, "IMAGEBATCH_PRICE: '1,5' is not an amount of money"),
])
def test_bad_budget_or_price_exits_2_and_sends_nothing(tmp_path, capsys, monkeypatch, args,
                                                      env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    manifest, out = _manifest(tmp_path), tmp_path / "outputs"
    assert main(["run", str(manifest), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written, so nothing sent (no server was started)


# -- the scheduled workflow's budget -------------------------------------------------------------

def _generate_script(workflow_text: str) -> tuple[str, dict]:
    doc = yaml.safe_load(workflow_text)
    (step,) = [s for s in doc["jobs"]["generate"]["steps"] if s.get("name") == "Generate"]
    return step["run"], step["env"]


@pytest.mark.parametrize("source", ["repository", "init"])
@pytest.mark.parametrize(("budget", "exit_code", "want_code", "want_args"), [
    ("7", 3, 0, "--budget 2"),  # 7 over 3 shards: 2 each; a spent budget is no failure
    ("1", 3, 0, "--budget 1"),  # at least 1 per shard
    ("", 0, 0, None),  # no variable: no budget
    ("7", 1, 1, "--budget 2"),  # failed jobs still fail the step
    ("lots", 0, 2, None),  # not a number: refused before running
])
def test_the_workflow_takes_its_budget_from_a_variable(tmp_path, source, budget, exit_code,
                                                       want_code, want_args):
    text = ((ROOT / ".github/workflows/imagebatch.yml").read_text() if source == "repository"
            else scaffold.workflow_text("imagebatch==0"))
    script, env = _generate_script(text)
    # the variable reaches the script through the environment, never pasted into it
    assert env["BUDGET"] == "${{ vars.IMAGEBATCH_BUDGET }}" and "vars." not in script
    assert env["IMAGEBATCH_PRICE"] == "${{ vars.IMAGEBATCH_PRICE }}"
    stub = tmp_path / "bin" / "imagebatch"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\nexit {exit_code}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    run_env = {"PATH": f"{stub.parent}:{os.environ['PATH']}", "BUDGET": budget, "SHARDS": "3",
               "SHARD": "1", "KEY_RPM": "20", "OWN_KEY": "", "SHARED_KEY": "k"}
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=run_env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == want_code, proc.stdout + proc.stderr
    args_file = tmp_path / "args"
    if want_code == 2:
        assert not args_file.exists() and "IMAGEBATCH_BUDGET" in proc.stdout
        return
    args = args_file.read_text()
    assert "--shard 1/3" in args
    if want_args is None:
        assert "--budget" not in args
    else:
        assert want_args in args
    if exit_code == 3:
        assert "::notice::" in proc.stdout


def test_price_is_a_decimal_so_costs_are_exact():
    price = parse_amount("0.1", "--price")
    assert price.of(3) == Decimal("0.3")


def test_a_budget_that_covers_the_work_exactly_exits_0(tmp_path):
    report, stats = asyncio.run(_run(tmp_path, ServerOptions(flat=True, key=KEY), 4, budget=4))
    assert stats.requests == 4 and report.budget_reached and not report.stopped_by_budget
    assert report_run(report, as_json=False, out=io.StringIO(), err=io.StringIO()) == 0
    assert _summary(tmp_path)["stopped_by_budget"] is False


def test_failed_jobs_outrank_a_spent_budget(tmp_path):
    # no retries: the first request's fault fails its job; the budget then leaves jobs pending
    report, stats = asyncio.run(_run(
        tmp_path, ServerOptions(flat=True, key=KEY, script={1: "html"}), 6, budget=3,
        retries=0))
    (plan,) = report.plans
    assert stats.requests == 3 and plan.failed == 1 and plan.pending == 3
    assert report.stopped_by_budget
    out = io.StringIO()
    assert report_run(report, as_json=False, out=out, err=io.StringIO()) == 1
    assert "budget reached" in out.getvalue()


@pytest.mark.parametrize("source", ["repository", "init"])
@pytest.mark.parametrize(("budget", "want"), [("300", True), ("", False)])
def test_the_nightly_merge_leaves_a_budgets_pending_jobs_for_the_next_night(
        tmp_path, source, budget, want):
    text = ((ROOT / ".github/workflows/imagebatch.yml").read_text() if source == "repository"
            else scaffold.workflow_text("imagebatch==0"))
    doc = yaml.safe_load(text)
    (step,) = [s for s in doc["jobs"]["merge"]["steps"]
               if s.get("name") == "Merge shards, build sheets and index"]
    assert step["env"]["BUDGET"] == "${{ vars.IMAGEBATCH_BUDGET }}"
    assert "vars." not in step["run"]
    stub = tmp_path / "bin" / "imagebatch"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, timeout=60,
                          env={"PATH": f"{stub.parent}:{os.environ['PATH']}", "BUDGET": budget},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text()
    assert args.startswith("merge ") and ("--pending-ok" in args) == want


def test_merge_pending_ok_exits_0_for_jobs_no_shard_reached(tmp_path, capsys):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nname: m\njobs:\n  - id: a\n    prompt: p\n"
                        "    seeds: [1, 2, 3, 4]\n")
    shard = tmp_path / "shard1"
    assert main(["run", str(manifest), "--out", str(shard), "--budget", "2", "--no-post"]) == 3
    merged = ["merge", str(shard), "--out", str(tmp_path / "all"), "--manifest",
              str(manifest), "--no-post"]
    assert main(merged) == 1  # jobs missing: a failure, unless told they are expected
    assert main([*merged, "--pending-ok"]) == 0
    assert "left for the next run" in capsys.readouterr().err

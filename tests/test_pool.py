"""A backend pool: several model resources, each paced on its own, members dropped and their
jobs moved, nothing lost or paid twice; against fakes on one clock, then real servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from runner_helpers import Clock, make_plan
from stress_helpers import leaks

from imagebatch.cli import main, report_run
from imagebatch.errors import AuthError, ConfigError, RetryableApiError, UnreachableError
from imagebatch.planning import config
from imagebatch.providers import connect
from imagebatch.running.client import GeneratedImage
from imagebatch.running.options import RunOptions
from imagebatch.running.retry import Pacer
from imagebatch.running.run import run_plans
from imagebatch.running.runner import Member, Runner, RunSettings
from imagebatch.service.server import ServerOptions, running_server

KEYS = {"POOLA": "inf-POOL-a1b2c3d4e5-first", "POOLB": "inf-POOL-f6e7d8c9b0-second",
        "POOLC": "inf-POOL-0a9b8c7d6e-third"}


# -- the runner against fakes, on one fake clock --------------------------------------------

class FakeStore:
    def __init__(self) -> None:
        self.saved: dict[str, str | None] = {}  # key -> member that made it
        self.failed: dict[str, str] = {}

    def cannot_write(self, job):
        return None

    def save(self, job, data, *, attempts, seconds, created, member=None):
        assert job.key not in self.saved, "saved twice"
        self.saved[job.key] = member

    def fail(self, job, error, *, attempts, seconds, member=None):
        self.failed[job.key] = error


class MemberClient:
    """One member's service: images, until `fail_from` images were made; then `error`."""

    def __init__(self, name: str, *, fail_from: int | None = None, error=None) -> None:
        self.name = name
        self.fail_from, self.error = fail_from, error
        self.requests = 0
        self.images = 0

    async def generate(self, job, observe=None, sending=None):
        if sending is not None:
            sending()  # as the client does, just before its request goes out
        self.requests += 1
        await asyncio.sleep(0)
        if self.fail_from is not None and self.images >= self.fail_from:
            raise self.error(job) if callable(self.error) else self.error
        self.images += 1
        return GeneratedImage(data=b"img", format="png", width=1, height=1)


def _pool(clock: Clock, clients: list[MemberClient], rpm: float | None = 60) -> list[Member]:
    return [Member(c, Pacer(rpm, clock=clock, sleep=clock.sleep), prefix=c.name)
            for c in clients]


def _run(members, clock, n, *, concurrency=6, retries=5):
    store, drops = FakeStore(), []
    runner = Runner(members, RunSettings(concurrency=concurrency, retries=retries),
                    sleep=clock.sleep, clock=clock, rng=lambda: 0.0,
                    on_drop=lambda m: drops.append(m.prefix))
    jobs = make_plan(n).jobs
    state = asyncio.run(runner.run([(store, j) for j in jobs]))
    return state, store, drops, jobs


def test_each_member_is_paced_on_its_own_and_they_share_the_jobs_evenly():
    clock = Clock()
    clients = [MemberClient(n) for n in ("A", "B", "C")]
    state, store, drops, _jobs = _run(_pool(clock, clients), clock, 90)
    assert state.ok == 90 and len(store.saved) == 90 and not drops
    assert sorted(c.images for c in clients) == [30, 30, 30]
    # three members at 60 a minute each: 90 starts take 29 s, not the 89 s of one key
    assert 29.0 <= clock.now <= 30.0
    assert Counter(store.saved.values()) == {"A": 30, "B": 30, "C": 30}


def test_a_key_refused_mid_run_drops_that_member_once_and_its_jobs_go_to_the_others():
    clock = Clock()
    refused = AuthError("the service rejected the key (401): check B_KEY", status=401)
    clients = [MemberClient("A"), MemberClient("B", fail_from=5, error=refused),
               MemberClient("C")]
    members = _pool(clock, clients)
    state, store, drops, jobs = _run(members, clock, 60)
    assert drops == ["B"]
    assert state.ok == 60 and store.failed == {} and state.config_error is None
    assert set(store.saved) == {j.key for j in jobs}  # every job once (save asserts it)
    assert clients[1].images == 5 and Counter(store.saved.values())["B"] == 5
    # after the drop, B gets no request beyond those already in flight
    assert clients[1].requests - clients[1].images <= 6
    assert members[1].dropped == refused.message


def test_a_member_answering_429_to_everything_cools_and_the_run_finishes_on_the_others():
    clock = Clock()
    throttled = RetryableApiError("HTTP 429", status=429, retry_after=5.0)
    clients = [MemberClient("A"), MemberClient("B"),
               MemberClient("C", fail_from=0, error=throttled)]
    members = _pool(clock, clients)
    state, store, drops, _ = _run(members, clock, 60)
    assert state.ok == 60 and store.failed == {} and not drops
    assert clients[2].images == 0
    # cooled 5 s after each 429: about one request per 5 s, never a hot loop
    assert clients[2].requests <= clock.now / 5 + 2, (clients[2].requests, clock.now)
    assert members[2].throttled == clients[2].requests


def test_a_member_that_never_connects_is_dropped_naming_its_url_variable():
    clock = Clock()
    unreachable = UnreachableError("cannot connect to b.example:443 (Connection refused)")
    clients = [MemberClient("A"), MemberClient("B", fail_from=0, error=unreachable)]
    state, store, drops, _ = _run(_pool(clock, clients), clock, 20, retries=3)
    assert drops == ["B"] and state.ok == 20 and store.failed == {}
    assert clients[1].requests == 4  # its retries' worth, once, then never again


def test_when_every_member_is_dropped_the_run_stops_with_the_jobs_pending():
    clock = Clock()
    clients = [MemberClient(n, fail_from=2, error=AuthError(f"401: check {n}_KEY", status=401))
               for n in ("A", "B")]
    state, store, drops, _ = _run(_pool(clock, clients), clock, 20)
    assert sorted(drops) == ["A", "B"] and state.ok == 4 and store.failed == {}
    assert state.config_error is not None
    assert "every member of the pool was dropped" in state.config_error.message
    assert "check A_KEY" in state.config_error.message
    assert "check B_KEY" in state.config_error.message


# -- the pool's configuration ----------------------------------------------------------------

def _env(**over: str) -> dict[str, str]:
    env = {}
    for prefix, key in KEYS.items():
        env.update({f"{prefix}_URL": "https://us.inference.heroku.com", f"{prefix}_KEY": key})
    env.update(over)
    return {k: v for k, v in env.items() if v}


def test_prefixes_repeated_or_comma_separated_and_duplicates_noted():
    prefixes, notes = config.split_prefixes(["POOLA,POOLB", "POOLA", " POOLC "])
    assert prefixes == ("POOLA", "POOLB", "POOLC")
    assert notes == ["--env-prefix POOLA is given more than once; used once"]
    with pytest.raises(ConfigError, match="letters, digits"):
        config.split_prefixes(["POOLA,,POOLB"])


@pytest.mark.parametrize(("drop", "variable"), [("POOLB_KEY", "POOLB_KEY"),
                                                ("POOLB_URL", "POOLB_URL")])
def test_a_member_without_its_url_or_key_is_an_error_naming_the_variable(drop, variable):
    with pytest.raises(ConfigError, match=variable) as caught:
        connect.pool(_env(**{drop: ""}), ["POOLA", "POOLB"])
    assert not leaks(KEYS["POOLA"], {"message": str(caught.value)})


def test_members_must_serve_one_model():
    env = _env(POOLA_MODEL_ID="stable-image-ultra", POOLB_MODEL_ID="other-model")
    with pytest.raises(ConfigError, match="POOLA_MODEL_ID is 'stable-image-ultra', "
                                          "POOLB_MODEL_ID is 'other-model'"):
        connect.pool(env, ["POOLA", "POOLB"])


def test_one_key_under_two_prefixes_is_one_member_with_a_note_that_never_shows_the_key():
    env = _env(POOLC_KEY=KEYS["POOLA"])
    conns, notes = connect.pool(env, ["POOLA", "POOLB", "POOLC"])
    assert [c.prefix for c in conns] == ["POOLA", "POOLB"]
    assert notes == [("POOLC_KEY is the same key as POOLA_KEY: one limit, used once "
                      "(POOLC left out of the pool)")]


def test_the_cli_refuses_a_pool_with_a_missing_key_before_sending_anything(
        tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\njobs:\n  - id: a\n    prompt: p\n    seeds: 1\n")

    async def check() -> int:
        async with running_server(ServerOptions(workers=1, flat=True)) as srv:
            for name, value in _env(POOLA_URL=srv.url, POOLB_URL=srv.url, POOLB_KEY="").items():
                monkeypatch.setenv(name, value)
            code = await asyncio.to_thread(
                main, ["run", str(manifest), "--out", str(tmp_path / "out"),
                       "--env-prefix", "POOLA", "--env-prefix", "POOLB"])
            assert srv.stats.requests == 0
            return code

    assert asyncio.run(check()) == 2
    err = capsys.readouterr().err
    assert "POOLB_KEY" in err and not leaks(KEYS["POOLA"], {"err": err})


# -- whole runs against several embedded servers ---------------------------------------------

async def _pool_run(tmp_path: Path, servers: list[ServerOptions], n: int, *, during=None,
                    **kw):
    """Run `n` jobs on a pool of embedded servers; (report, stats per member, err text).

    `during(stops, running, task)` runs beside the run; `await stops[i]()` shuts server i.
    """
    async with contextlib.AsyncExitStack() as outer:
        stacks = [await outer.enter_async_context(contextlib.AsyncExitStack()) for _ in servers]
        running = [await stack.enter_async_context(running_server(o))
                   for stack, o in zip(stacks, servers, strict=True)]
        prefixes = list(KEYS)[:len(servers)]
        conns = [connect.Connection(prefix=p, url=srv.url, key=KEYS[p])
                 for p, srv in zip(prefixes, running, strict=True)]
        kw.setdefault("backoff_base", 0.01)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, **kw)
        err = io.StringIO()
        task = asyncio.ensure_future(run_plans([make_plan(n)], conns, opts, err))
        if during is not None:
            await during([stack.aclose for stack in stacks], running, task)
        report = await task
        stats = {p: srv.stats for p, srv in zip(prefixes, running, strict=True)}
        return report, stats, err.getvalue()


def _member_options(prefix: str, **kw) -> ServerOptions:
    # flat pictures: what a pool run is checked for (who made what, once) does not depend on
    # what they show, and a flat one is made in a thread, with no render process to start
    return ServerOptions(key=KEYS[prefix], workers=1, flat=True, **kw)


def _check_outputs(tmp_path: Path, n: int) -> list[dict]:
    """Every job made exactly once, by the member its record names; every image decodes."""
    root = tmp_path / "out" / "demo"
    records = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == n == len({r["key"] for r in ok}), "a job lost or made twice"
    images = [p for p in (root / "images").rglob("*") if p.is_file()]
    assert len(images) == n
    for path in images:
        with Image.open(path) as img:
            img.load()
            assert img.size == (1024, 1024)
    assert all(r["member"] in KEYS for r in records)
    return records


@pytest.mark.slow
def test_three_members_share_the_work_at_three_times_one_limit(tmp_path):
    servers = [_member_options(p, rpm=4, window=1.0) for p in KEYS]
    report, stats, err = asyncio.run(_pool_run(tmp_path, servers, 36, rpm=240, concurrency=6))
    records = _check_outputs(tmp_path, 36)
    made = Counter(r["member"] for r in records)
    assert set(made) == set(KEYS) and min(made.values()) >= 9, made
    assert sum(s.by_status[429] for s in stats.values()) == 0, err
    (plan,) = report.plans
    assert plan.succeeded == 36 and plan.failed == 0
    assert {m.prefix: m.images for m in report.members} == dict(made)
    summary = json.loads((tmp_path / "out/demo/summary.json").read_text())
    assert summary["members"]["POOLB"] == {"requests": stats["POOLB"].requests,
                                           "images": made["POOLB"], "throttled": 0,
                                           "dropped": None}
    text = io.StringIO()
    assert report_run(report, as_json=False, out=text, err=io.StringIO()) == 0
    assert "member POOLC: " in text.getvalue()
    for key in KEYS.values():
        assert not leaks(key, {"err": err, "out": text.getvalue()}, under=tmp_path)


@pytest.mark.slow
def test_a_member_killed_mid_run_is_dropped_and_no_job_is_lost_or_doubled(tmp_path):
    async def kill_b(stops, running, task):
        # the server's counters have no event to wait on: polling them is the way to watch
        while running[1].stats.by_status[200] < 3 and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await stops[1]()  # its requests in flight are cut, then it refuses connections

    servers = [_member_options(p, rpm=10, window=1.0) for p in KEYS]
    report, stats, err = asyncio.run(_pool_run(tmp_path, servers, 30, rpm=600, concurrency=6,
                                               retries=2, during=kill_b))
    _check_outputs(tmp_path, 30)
    (b,) = [m for m in report.members if m.prefix == "POOLB"]
    assert b.dropped is not None and "check POOLB_URL" in b.dropped
    assert 3 <= b.images <= stats["POOLB"].by_status[200]
    assert err.count("pool member POOLB dropped") == 1
    assert report.plans[0].succeeded == 30 and report.config_error is None


@pytest.mark.slow
def test_a_member_whose_key_is_revoked_after_some_images_is_dropped_naming_its_key(tmp_path):
    servers = [_member_options("POOLA"), _member_options("POOLB", revoke_after=4),
               _member_options("POOLC")]
    report, stats, err = asyncio.run(_pool_run(tmp_path, servers, 40, rpm=1200,
                                               concurrency=6))
    records = _check_outputs(tmp_path, 40)
    assert Counter(r["member"] for r in records if r["status"] == "ok")["POOLB"] <= 4 + 6
    (b,) = [m for m in report.members if m.prefix == "POOLB"]
    assert b.dropped is not None and "check POOLB_KEY" in b.dropped
    assert err.count("pool member POOLB dropped") == 1
    # refused requests after the key went: only those already in flight when it did
    assert stats["POOLB"].by_status[401] <= 6
    assert stats["POOLB"].by_status[200] == b.images
    for key in KEYS.values():
        assert not leaks(key, {"err": err}, under=tmp_path)


@pytest.mark.slow
def test_a_member_answering_only_429_is_cooled_not_hot_looped(tmp_path):
    servers = [_member_options("POOLA"), _member_options("POOLB"),
               _member_options("POOLC", fail_rate=1.0, faults=("429",))]
    report, stats, err = asyncio.run(_pool_run(tmp_path, servers, 40, rpm=600, concurrency=6))
    _check_outputs(tmp_path, 40)
    (plan,) = report.plans
    assert plan.succeeded == 40 and plan.failed == 0 and report.config_error is None
    assert "dropped" not in err
    c = next(m for m in report.members if m.prefix == "POOLC")
    assert c.images == 0 and c.dropped is None and c.throttled == stats["POOLC"].by_status[429]
    # Retry-After: 1 cools it a second each time: a handful of tries over the run, not a loop
    assert c.throttled <= plan.seconds + 6, (c.throttled, plan.seconds)


@pytest.mark.slow
def test_run_status_and_rerun_of_a_pool_from_the_command_line(tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nname: pooled\njobs:\n  - id: a\n    prompt: p\n"
                        "    seeds: {start: 1, count: 8}\n")
    out = str(tmp_path / "out")
    pool = ["--env-prefix", "POOLA,POOLB"]

    async def scenario() -> tuple[list[int], list[int]]:
        async with running_server(_member_options("POOLA")) as a, \
                running_server(_member_options("POOLB")) as b:
            monkeypatch.setenv("POOLA_URL", a.url)
            monkeypatch.setenv("POOLA_KEY", KEYS["POOLA"])
            monkeypatch.setenv("POOLB_URL", b.url)
            monkeypatch.setenv("POOLB_KEY", KEYS["POOLB"])
            codes = [await asyncio.to_thread(main, ["run", str(manifest), "--out", out,
                                                    "--rpm", "0", "--json", *pool])]
            first = capsys.readouterr()
            codes.append(await asyncio.to_thread(main, ["status", str(manifest), "--out", out,
                                                        *pool]))
            status = capsys.readouterr().out
            codes.append(await asyncio.to_thread(main, ["run", str(manifest), "--out", out,
                                                        "--rpm", "0", *pool]))
            sent = [a.stats.requests, b.stats.requests]
            doc = json.loads(first.out)
            assert doc["succeeded"] == 8 and set(doc["members"]) == {"POOLA", "POOLB"}
            assert sum(m["images"] for m in doc["members"].values()) == 8
            assert "8 done" in status
            for key in KEYS.values():
                assert not leaks(key, {"first": first.out + first.err, "status": status},
                                 under=tmp_path)
            return codes, sent

    codes, sent = asyncio.run(scenario())
    assert codes == [0, 0, 0]
    assert sum(sent) == 8  # the rerun sent nothing: done by either member is done

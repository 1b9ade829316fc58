"""Runs at once on one shared cache pay for each image once: claims made before a request,
waited out or taken over, released when a run stops; uploads that find the image there;
stores that cannot hold claims. Against a folder and moto's S3 server on 127.0.0.1, with
real `imagebatch run` processes where two runs meet."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cache_helpers import (  # noqa: F401 - the fixtures s3 and aws_env
    api_options,
    aws_env_fixture,
    images,
    opened,
    run_with_cache,
    s3_fixture,
    wait_for_lines,
)
from PIL import Image
from runner_helpers import KEY, make_plan
from stress_helpers import run_forked, scale

from imagebatch.cli import main
from imagebatch.planning import config
from imagebatch.running.cache import Transfers
from imagebatch.running.claims import Claims, _where
from imagebatch.running.progress import Progress
from imagebatch.running.summary import RunReport, markdown, text
from imagebatch.service.server import running_server
from imagebatch.storage.cache import Cache, claim_body, claim_name
from imagebatch.storage.store import Store, read_records

# one worker runs the S3 tests of both modules: moto and boto3 take seconds of CPU to
# import and start, once a process
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.together("s3")]

MANIFEST = """\
version: 1
name: team
defaults:
  aspect_ratio: "1:1"
jobs:
  - id: heron
    prompt: "a heron in the reeds"
    seeds: {{start: 1, count: {count}}}
"""


def _manifest(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(MANIFEST.format(count=count))
    return path


def _claims_in(folder: Path) -> list[str]:
    """The claim objects a folder cache holds."""
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "claims").rglob("*")
                  if p.is_file()) if (folder / "claims").is_dir() else []


def _decoded(root: Path, count: int) -> None:
    """`root` holds `count` images, each done and decoding whole at 1024 x 1024."""
    made = images(root)
    assert len(made) == count
    for name in made:
        with Image.open(root / "images" / name) as image:
            image.load()
            assert image.size == (1024, 1024)
    done = {r.key for r in read_records(root / "results.jsonl") if r.status == "ok"}
    assert len(done) == count


# Two runs of concurrency 2 that both send before either is answered share any number of
# jobs past four: 10 under `make test` (every claim, wait and restore of the 20 happens
# there too, at half the requests to the store), 20 under `make soak`.
SHARED = scale(20, 10)


@pytest.mark.parametrize(("kind", "count", "latency", "lease"), [
    pytest.param("folder", SHARED, 100, None, id="folder"),
    # subprocesses take seconds: `make check` runs the folder case, `make test` all three
    pytest.param("s3", SHARED, 100, None, id="s3", marks=pytest.mark.slow),
    # each request outlasts the lease: only its renewals keep the other run waiting
    pytest.param("folder", 4, 2500, "1", id="renewed", marks=pytest.mark.slow),
])
async def test_two_runs_at_once_on_one_cache_pay_once_per_image(tmp_path, s3, aws_env, kind,
                                                                count, latency, lease):
    manifest = _manifest(tmp_path, count)
    if kind == "s3":
        bucket = s3.bucket()
        url = f"s3://{bucket}/team"
    else:
        (tmp_path / "share").mkdir()
        url = str(tmp_path / "share")
    # Both runs send at once: the image server's first answers wait until it has three
    # requests in flight, and a run of concurrency 2 sends at most two (so neither can
    # finish before the other has started, however slowly a process starts).
    arrived, both = 0, asyncio.Event()

    async def gate() -> None:
        nonlocal arrived
        arrived += 1
        if arrived >= 3:
            both.set()
        await asyncio.wait_for(both.wait(), 60)

    async with running_server(api_options(latency_ms=latency)) as srv, \
            _proxy(srv.url, before=gate) as api:
        env = {**os.environ, **aws_env, "DIFFUSION_URL": api, "DIFFUSION_KEY": KEY,
               "IMAGEBATCH_CACHE": url}
        if lease is not None:
            env["IMAGEBATCH_CLAIM_LEASE"] = lease

        async def one(out: str) -> tuple[int, str]:
            # a process of its own (forked: stress_helpers.Forker), the two at once
            done = await asyncio.to_thread(run_forked, [
                "run", str(manifest), "--out", str(tmp_path / out), "--no-post", "--rpm", "0",
                "--concurrency", "2"], env, tmp_path)
            return done.returncode, done.stderr

        (code_a, err_a), (code_b, err_b) = await asyncio.gather(one("a"), one("b"))
        assert (code_a, code_b) == (0, 0), err_a + err_b
        # exactly one request per image, over both runs, as the server received them
        assert srv.stats.requests == count
        assert len(srv.stats.bodies) == len(set(srv.stats.bodies)) == count
    summaries = [json.loads((tmp_path / out / "team/summary.json").read_text())
                 for out in ("a", "b")]
    for summary in summaries:
        assert summary["succeeded"] + summary["restored"] == count
        assert (summary["failed"], summary["pending"], summary["upload_failed"]) == (0, 0, 0)
    # each made a share and restored the other's: they ran at once
    assert summaries[0]["succeeded"] + summaries[1]["succeeded"] == count
    assert all(s["succeeded"] > 0 and s["restored"] > 0 for s in summaries), summaries
    for out in ("a", "b"):
        _decoded(tmp_path / out / "team", count)
    assert images(tmp_path / "a/team") == images(tmp_path / "b/team")
    # every claim was given up: the cache holds the images and nothing else
    if kind == "s3":
        assert not [k for k in s3.objects(bucket, claims=True) if "/claims/" in k]
        assert len(s3.objects(bucket)) == count
    else:
        assert _claims_in(tmp_path / "share") == []


async def _claim(cache: Cache, key: str, backend: str, *, run: str, expires: float,
                 generation: int = 0) -> str:
    """Leave the claim of another run (on another machine) in the cache, as it would."""
    name = claim_name(key, backend, generation)
    assert await cache.create(name, claim_body(run, expires, "another-machine"))
    return name


async def test_a_crashed_runs_lapsed_claims_are_taken_over_and_cleared(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(4)
    async with running_server(api_options()) as srv:
        backend = config.backend_name(srv.url)
        for job in plan.jobs:  # a run that died a minute ago, its leases run out
            await _claim(cache, job.key, backend, run="crashed", expires=time.time() - 60)
        assert len(_claims_in(share)) == 4
        report, err = await run_with_cache(plan, srv.url, tmp_path / "out", cache)
        p = report.plans[0]
        assert (p.succeeded, p.failed, p.pending, p.uploaded) == (4, 0, 0, 4)
        assert srv.stats.requests == 4 and "waiting" not in err
    _decoded(tmp_path / "out/demo", 4)
    assert _claims_in(share) == []  # the lapsed generation went with the new one


async def test_a_live_claim_never_fulfilled_is_waited_out_then_made_last(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(4)
    held = plan.jobs[0]
    async with running_server(api_options()) as srv:
        # another run claimed the first job for one more second, then hung: it never
        # uploads, never renews
        await _claim(cache, held.key, config.backend_name(srv.url), run="hung",
                     expires=time.time() + 1.0)
        report, _ = await run_with_cache(plan, srv.url, tmp_path / "out", cache)
        p = report.plans[0]
        assert (p.succeeded, p.restored, p.failed, p.pending) == (4, 0, 0, 0)
        assert srv.stats.requests == 4
        # its other jobs first, the claimed one once the claim had lapsed
        assert srv.stats.bodies[-1] == held.body.encode()
    _decoded(tmp_path / "out/demo", 4)
    assert _claims_in(share) == []


async def test_a_killed_runs_live_claims_are_taken_over_by_its_next_run_in_that_folder(
        tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(3)
    first = plan.jobs[0]
    out = tmp_path / "out"
    async with running_server(api_options()) as srv:
        backend = config.backend_name(srv.url)
        # a run killed a moment ago into this very folder, its claim on the first job
        # still live for half a minute (the folder is locked to one run: it is dead)
        where = _where(Store(out, "demo", backend))
        assert await cache.create(claim_name(first.key, backend, 0),
                                  claim_body("killed", time.time() + 30, where))
        report, _ = await run_with_cache(plan, srv.url, out, cache, concurrency=1)
        assert report.plans[0].succeeded == 3 and srv.stats.requests == 3
        # taken over at once, in plan order: not left for last and waited out
        assert srv.stats.bodies[0] == first.body.encode()
    assert _claims_in(share) == []


async def test_a_waiting_run_restores_the_image_the_claim_holder_uploads(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(4)
    held = plan.jobs[1]
    async with running_server(api_options()) as srv:
        backend = config.backend_name(srv.url)
        # the image the other run is making, made beforehand in a folder of its own
        other, _ = await run_with_cache(make_plan(4), srv.url, tmp_path / "other", None)
        blob = (tmp_path / "other/demo/images" / held.path).read_bytes()
        name = await _claim(cache, held.key, backend, run="other", expires=time.time() + 60)
        before = srv.stats.requests
        out = tmp_path / "out"

        async def the_other_run_finishes() -> None:
            await wait_for_lines(out / "demo/results.jsonl", 3)  # ours: the other three
            assert await cache.put(held.key, backend, blob, "png")
            await cache.remove(name)

        finishing = asyncio.ensure_future(the_other_run_finishes())
        report, _ = await run_with_cache(plan, srv.url, out, cache)
        await finishing
        p = report.plans[0]
        assert (p.succeeded, p.restored, p.pending, p.failed) == (3, 1, 0, 0)
        assert srv.stats.requests - before == 3  # not the one the other run made
        assert held.body.encode() not in srv.stats.bodies[before:]
    assert (out / "demo/images" / held.path).read_bytes() == blob
    _decoded(out / "demo", 4)
    records = {r.key: r for r in read_records(out / "demo/results.jsonl")}
    assert records[held.key].source == "cache"


@pytest.mark.parametrize("kind", ["folder", "s3"])
async def test_of_many_runs_taking_over_one_lapsed_claim_exactly_one_wins(tmp_path, s3,
                                                                         aws_env, kind):
    if kind == "s3":
        cache = opened(f"s3://{s3.bucket()}/race", aws_env)
    else:
        cache = opened(str(tmp_path), {})
    plan = make_plan(1)
    job = plan.jobs[0]
    now = 1_000_000.0
    await _claim(cache, job.key, "local", run="crashed", expires=now - 1)
    got = []
    for n in range(8):  # eight runs on eight machines, each its own outputs folder
        store = Store(tmp_path / f"out{n}", "demo", "local")
        claims = Claims(Transfers(cache, io.StringIO()), 60.0, clock=lambda: now)
        got.append((claims, store))
    results = await asyncio.gather(*(c.claim(s, job) for c, s in got))
    assert sorted(results) == ["mine"] + ["theirs"] * 7
    # the winner's is generation 1, live; the crashed run's generation 0 stays until the
    # image is in the cache
    assert [g for g, _ in await cache.claims(job.key, "local")] == [0, 1]
    for claims, _ in got:
        await claims.close()  # the winner stops without the image: it releases its own
    assert [g for g, _ in await cache.claims(job.key, "local")] == [0]


async def test_a_run_stopped_by_its_budget_releases_the_claims_it_did_not_fulfil(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(6)
    out = tmp_path / "out"
    seen: set[str] = set()
    async with running_server(api_options(latency_ms=200)) as srv:

        async def watch() -> None:  # the claims in the cache while the run goes
            while True:
                seen.update(await asyncio.to_thread(_claims_in, share))
                await asyncio.sleep(0.02)

        watching = asyncio.ensure_future(watch())
        try:
            report, _ = await run_with_cache(plan, srv.url, out, cache, concurrency=2,
                                             budget=3)
        finally:
            watching.cancel()
        p = report.plans[0]
        assert (p.succeeded, p.pending) == (3, 3) and report.budget_reached
        assert srv.stats.requests == 3
        assert seen  # each job was claimed before its request
        assert _claims_in(share) == []  # and none is left: made and uploaded, or released
        # so another run (another outputs folder) makes the rest without waiting on any
        second, err = await run_with_cache(plan, srv.url, tmp_path / "second", cache)
        assert (second.plans[0].restored, second.plans[0].succeeded) == (3, 3)
        assert srv.stats.requests == 6 and "waiting" not in err


async def test_an_upload_that_finds_the_image_there_counts_as_already_there(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(3)
    async with running_server(api_options()) as srv:
        await run_with_cache(plan, srv.url, tmp_path / "first", cache)
        # --force makes them again (the embedded server draws the same pictures): their
        # uploads find the very objects there
        report, _ = await run_with_cache(plan, srv.url, tmp_path / "second", cache,
                                         force=True)
    p = report.plans[0]
    assert (p.succeeded, p.uploaded, p.already_there, p.upload_failed) == (3, 0, 3, 0)
    summary = json.loads((tmp_path / "second/demo/summary.json").read_text())
    assert (summary["uploaded"], summary["already_there"]) == (0, 3)
    whole = RunReport((p,))
    assert "0 uploaded, 0 failed to upload, 3 already there" in text(whole)
    assert "| already there |" in markdown(whole) and "| 0 | 3 |" in markdown(whole)


@asynccontextmanager
async def _proxy(target: str, *, drop: tuple[str, ...] = (),
                 before: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[str]:
    """An HTTP endpoint on 127.0.0.1 passing every request on to `target` (without the
    headers `drop`, after awaiting `before`): its URL."""
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        if before is not None:
            await before()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", *drop)}
        async with session.request(request.method, target + request.path_qs,
                                   headers=headers, data=await request.read(),
                                   allow_redirects=False) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "content-encoding")}
            return web.Response(status=answer.status, headers=kept, body=body)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_store_without_conditional_puts_runs_without_claims_and_says_so(
        tmp_path, s3, aws_env, monkeypatch):
    bucket = s3.bucket()
    # an S3-compatible store that ignores If-None-Match, overwriting where a create-only
    # put must fail (as some do)
    async with _proxy(s3.endpoint, drop=("if-none-match",)) as endpoint:
        env = {**aws_env, "AWS_ENDPOINT_URL": endpoint}
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        cache = opened(f"s3://{bucket}/plain", env)
        plan = make_plan(3)
        async with running_server(api_options()) as srv:
            report, err = await run_with_cache(plan, srv.url, tmp_path / "out", cache)
            assert srv.stats.requests == 3
    p = report.plans[0]
    assert (p.succeeded, p.uploaded, p.upload_failed) == (3, 3, 0)  # as before claims
    assert err.count("cannot hold claims") == 1
    assert f"note: cache s3://{bucket}/plain cannot hold claims (it overwrote an object " \
        "that a create-only put must keep)" in err
    assert "testing" not in err
    assert not [k for k in s3.objects(bucket, claims=True) if "/claims/" in k]
    assert len(s3.objects(bucket)) == 3
    _decoded(tmp_path / "out/demo", 3)


def test_the_progress_line_says_how_many_images_another_run_is_making():
    out = io.StringIO()
    progress = Progress(5, stream=out, tty=False, interval=0)
    progress.update(2, 0, waiting=3)
    assert "waiting for 3 images another run is making" in out.getvalue()
    progress.update(3, 0, waiting=1)
    assert out.getvalue().splitlines()[-1].endswith("waiting for 1 image another run is making")
    progress.update(5, 0)
    assert "waiting" not in out.getvalue().splitlines()[-1]


def test_a_lease_that_is_not_a_number_of_seconds_is_exit_2(tmp_path, monkeypatch, capsys):
    manifest = _manifest(tmp_path, 1)
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv("IMAGEBATCH_CLAIM_LEASE", bad)
        assert main(["run", str(manifest), "--out", str(tmp_path / "out"), "--local"]) == 2
        err = capsys.readouterr().err
        assert "IMAGEBATCH_CLAIM_LEASE must be a number of seconds" in err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()

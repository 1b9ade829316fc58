"""The shared cache against a real S3 HTTP endpoint on 127.0.0.1 (moto's server mode):
restore with no request sent, shards filling one bucket, a stopped endpoint, bad objects,
bad configuration at start, a run killed during its uploads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from cache_helpers import (  # noqa: F401 - the fixtures s3 and aws_env
    api_options,
    aws_env_fixture,
    check_names,
    images,
    opened,
    run_with_cache,
    s3_fixture,
    wait_for_lines,
)
from PIL import Image
from runner_helpers import KEY, make_plan
from stress_helpers import run_forked, scale, start_cli

from imagebatch.commands.share import Share, pull_command, push_command
from imagebatch.planning.manifest import load_plans
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run
from imagebatch.service.server import running_server
from imagebatch.storage.cache import CacheError, object_name
from imagebatch.storage.store import read_records

# one worker runs the S3 tests of both modules: moto and boto3 take seconds of CPU to
# import and start, once a process
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.together("s3")]

MANIFEST = """\
version: 1
name: {name}
defaults:
  aspect_ratio: "1:1"
jobs:
  - id: fox
    prompt: "a red fox in the snow"
    seeds: {{start: 1, count: {count}}}
"""


def _manifest(tmp_path: Path, name: str = "team", count: int = 8) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(MANIFEST.format(name=name, count=count))
    return path


async def test_outputs_deleted_run_again_restores_everything_and_sends_nothing(
        tmp_path, s3, aws_env):
    bucket = s3.bucket()
    cache = opened(f"s3://{bucket}/team", aws_env)
    plan = make_plan(5)
    out = tmp_path / "out"
    async with running_server(api_options()) as srv:
        first, _ = await run_with_cache(plan, srv.url, out, cache, post=True)
        assert (first.plans[0].succeeded, first.plans[0].uploaded) == (5, 5)
        assert srv.stats.requests == 5
        made = images(out / "demo")
        assert len(made) == 5
        objects = s3.objects(bucket)
        assert len(objects) == 5
        check_names(objects, "team/")
        # the objects are the very files saved (request embedded)
        assert sorted(objects.values()) == sorted(made.values())

        shutil.rmtree(out)
        second, err = await run_with_cache(plan, srv.url, out, cache, post=True)
        p = second.plans[0]
        assert srv.stats.requests == 5  # not one more request to the image API
        assert (p.restored, p.succeeded, p.requests, p.skipped, p.pending) == (5, 0, 0, 0, 0)
        assert p.uploaded == 0 and p.upload_failed == 0
        assert images(out / "demo") == made  # byte-identical
        assert (out / "demo/contact-sheet.png").is_file() and (out / "demo/index.html").is_file()
        with Image.open(out / "demo/contact-sheet.png") as sheet:
            sheet.load()
        records = list(read_records(out / "demo/results.jsonl"))
        assert [r.source for r in records] == ["cache"] * 5
        assert {r.backend for r in records} == {srv.url}
        summary = json.loads((out / "demo/summary.json").read_text())
        assert (summary["restored"], summary["uploaded"], summary["upload_failed"]) == (5, 0, 0)
        assert summary["cache"] == f"s3://{bucket}/team"
        assert "testing" not in (out / "demo/summary.json").read_text() + err


async def test_two_shards_into_one_bucket_then_a_third_folder_pulls_each_image_once(
        tmp_path, s3, aws_env):
    bucket = s3.bucket()
    url = f"s3://{bucket}/shared"
    manifest = _manifest(tmp_path)
    cache = opened(url, aws_env)
    async with running_server(api_options()) as srv:
        env = {**aws_env, "DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        for k in (1, 2):
            plans = load_plans([str(manifest)], env, "DIFFUSION", shard=(k, 2))
            report, _ = await run_with_cache(plans, srv.url, tmp_path / f"shard{k}", cache)
            assert report.plans[0].upload_failed == 0
        assert srv.stats.requests == 8
        assert len(s3.objects(bucket)) == 8
        out = io.StringIO()
        share = Share(manifest=str(manifest), out_dir=tmp_path / "laptop", cache=url)
        code = await asyncio.to_thread(pull_command, share, env, out, io.StringIO())
        assert code == 0
        assert "pulled 8 image(s)" in out.getvalue() and "0 not in the cache" in out.getvalue()
        pulled = images(tmp_path / "laptop/team")
        shards = {**images(tmp_path / "shard1/team"), **images(tmp_path / "shard2/team")}
        assert pulled == shards and len(pulled) == 8
        assert (tmp_path / "laptop/team/index.html").is_file()
        # incremental: a second pull moves nothing; still no request to the image API
        out = io.StringIO()
        await asyncio.to_thread(pull_command, share, env, out, io.StringIO())
        assert "pulled 0 image(s)" in out.getvalue() and "8 already here" in out.getvalue()
        assert srv.stats.requests == 8


async def test_endpoint_stopped_mid_run_uploads_fail_run_finishes_push_fills_bucket(
        tmp_path, s3, aws_env):
    bucket = s3.bucket()
    url = f"s3://{bucket}/p"
    manifest = _manifest(tmp_path, count=6)
    cache = opened(url, aws_env)
    out = tmp_path / "out"
    async with running_server(api_options(latency_ms=150)) as srv:
        env = {**aws_env, "DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        plans = load_plans([str(manifest)], env, "DIFFUSION")

        async def stop_after_two() -> None:
            await wait_for_lines(out / "team/results.jsonl", 2)
            await asyncio.to_thread(s3.stop)

        stopper = asyncio.ensure_future(stop_after_two())
        try:
            report, err = await run_with_cache(plans, srv.url, out, cache, concurrency=1)
        finally:
            await stopper
        p = report.plans[0]
        assert p.succeeded == 6 and p.failed == 0  # the run finished
        assert p.upload_failed >= 3 and p.uploaded + p.upload_failed == 6
        assert "push" in err and "testing" not in err
        s3.start()  # the fixture stops the restarted server at the end
        assert len(s3.objects(bucket)) == p.uploaded
        share = Share(manifest=str(manifest), out_dir=out, cache=url)
        text = io.StringIO()
        code = await asyncio.to_thread(push_command, share, env, text, io.StringIO())
        assert code == 0
        assert f"pushed {p.upload_failed} image(s)" in text.getvalue()
        objects = s3.objects(bucket)
        check_names(objects, "p/")
        assert sorted(objects.values()) == sorted(images(out / "team").values())
        assert srv.stats.requests == 6


async def test_corrupt_truncated_and_foreign_objects_are_detected_regenerated_replaced(
        tmp_path, s3, aws_env):
    bucket = s3.bucket()
    cache = opened(f"s3://{bucket}/c", aws_env)
    plan = make_plan(4)
    out = tmp_path / "out"
    client = s3.client()
    async with running_server(api_options()) as srv:
        await run_with_cache(plan, srv.url, out, cache)
        good = {name.removeprefix("c/"): data for name, data in s3.objects(bucket).items()}
        by_key = {name.split("/")[-1][:64]: (name, data) for name, data in good.items()}
        a, b, c, d = plan.jobs
        name_a, data_a = by_key[a.key]
        name_b, data_b = by_key[b.key]
        name_c, _ = by_key[c.key]
        _, data_d = by_key[d.key]
        flipped = bytearray(data_a)
        flipped[len(flipped) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"c/{name_a}", Body=bytes(flipped))  # corrupt
        client.put_object(Bucket=bucket, Key=f"c/{name_b}", Body=data_b[: len(data_b) // 2])
        # another job's whole, valid image filed under c's key, with its own true hash
        client.delete_object(Bucket=bucket, Key=f"c/{name_c}")
        foreign = "c/" + object_name(c.key, srv.url, hashlib.sha256(data_d).hexdigest(), "png")
        client.put_object(Bucket=bucket, Key=foreign, Body=data_d)
        shutil.rmtree(out)

        report, err = await run_with_cache(plan, srv.url, out, cache)
        p = report.plans[0]
        assert (p.restored, p.succeeded) == (1, 3)  # only d's object was good
        assert srv.stats.requests == 4 + 3
        assert "do not match the SHA-256" in err  # the corrupt and the truncated one
        assert err.count("is not the image of") == 3
        assert "another job's request" in err
        objects = s3.objects(bucket)
        assert foreign not in objects  # removed
        check_names(objects, "c/")  # every object left is whole and named by its hash
        assert sorted(objects.values()) == sorted(images(out / "demo").values())
        assert len(objects) == 4  # replaced, one per job


def _refuse(text: str) -> None:
    assert "\n" not in text.strip() and "Traceback" not in text


async def test_bad_cache_at_start_exits_2_naming_the_fix_and_sends_nothing(
        tmp_path, s3, aws_env):
    manifest = _manifest(tmp_path, count=2)
    async with running_server(api_options()) as srv:
        base = {**aws_env, "DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        cases = [
            ("gs://bucket/x", {}, "unknown cache scheme"),
            ("s3://no-such-bucket-here/x", {}, "bucket does not exist"),
            ("s3://any-bucket/x", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
             "check AWS_ENDPOINT_URL"),
            ("s3://KEYID:TOPSECRET@bucket/x", {}, "credentials do not go in the cache URL"),
        ]
        for url, more, words in cases:
            env = {**base, **more}
            opts = RunOptions(manifests=(str(manifest),), out=tmp_path / "out", cache=url)
            with pytest.raises(CacheError) as caught:
                await asyncio.to_thread(run, opts, env, io.StringIO())
            message = str(caught.value)
            assert words in message and caught.value.exit_code == 2
            assert "TOPSECRET" not in message and "testing" not in message
            _refuse(message)
        # the variable is named when it set the cache
        env = {**base, "IMAGEBATCH_CACHE": "ftp://x/y"}
        with pytest.raises(CacheError, match="IMAGEBATCH_CACHE"):
            await asyncio.to_thread(run, RunOptions(manifests=(str(manifest),),
                                                    out=tmp_path / "out"), env, io.StringIO())
        assert srv.stats.requests == 0
        assert not (tmp_path / "out").exists()  # nothing written either


async def test_a_refused_credential_exits_2_never_shows_it_and_sends_nothing(
        tmp_path, s3, aws_env, monkeypatch, capsys):
    bucket = s3.bucket()
    manifest = _manifest(tmp_path, count=2)
    secret = "wJalrXUtnFEMI-K7MDENG-NOTREAL-SECRET"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    async with running_server(api_options()) as srv:
        monkeypatch.setenv("DIFFUSION_URL", srv.url)
        monkeypatch.setenv("DIFFUSION_KEY", KEY)
        monkeypatch.setenv("IMAGEBATCH_CACHE", f"s3://{bucket}/x")
        import requests

        def auth(count: bytes) -> None:  # moto checks keys against its (empty) IAM, or not
            requests.post(f"{s3.endpoint}/moto-api/reset-auth", data=count, timeout=10)

        await asyncio.to_thread(auth, b"0")
        try:
            from imagebatch.cli import main

            code = await asyncio.to_thread(main, ["run", str(manifest), "--out",
                                                  str(tmp_path / "out")])
        finally:
            await asyncio.to_thread(auth, b"inf")
        captured = capsys.readouterr()
        assert code == 2
        assert "credentials were refused" in captured.err
        assert "AWS_ACCESS_KEY_ID" in captured.err and "IMAGEBATCH_CACHE" in captured.err
        everything = captured.out + captured.err
        assert secret not in everything and "AKIAWRONGWRONGWRONG1" not in everything
        assert srv.stats.requests == 0


@pytest.mark.slow
async def test_killed_during_uploads_then_resumed_nothing_lost_nothing_paid_twice(
        tmp_path, s3, aws_env):
    bucket = s3.bucket()
    url = f"s3://{bucket}/k"
    manifest = _manifest(tmp_path, count=12)
    out = tmp_path / "out"
    async with running_server(api_options(latency_ms=100)) as srv:
        env = {**os.environ, **aws_env, "DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY,
               "IMAGEBATCH_CACHE": url}
        cmd = ["run", str(manifest), "--out", str(out), "--no-post", "--rpm", "0",
               "--concurrency", "3"]
        proc = start_cli(cmd, env, tmp_path)  # a process of its own (stress_helpers.Forker)
        results = out / "team/results.jsonl"
        await wait_for_lines(results, 5)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 60)
        assert srv.stats.requests < 12
        saved_first = {r.key for r in read_records(results) if r.status == "ok"}
        bodies_first = len(srv.stats.bodies)
        before = s3.objects(bucket)
        check_names(before, "k/")  # whatever was cut off left no partial object

        again = await asyncio.to_thread(run_forked, cmd, env, tmp_path)
        assert again.returncode == 0, again.stderr
        # nothing paid twice: the second run asked for none of the images the first saved
        # (only a request in flight at the kill, whose image was never saved, is asked again)
        by_key = {j.key: j.body.encode() for j in load_plans([str(manifest)], env,
                                                               "DIFFUSION")[0].jobs}
        again = srv.stats.bodies[bodies_first:]
        assert not {by_key[k] for k in saved_first} & set(again)
        assert len(again) == 12 - len(saved_first)
        assert len(set(srv.stats.bodies)) == 12
        saved = {r.key for r in read_records(results) if r.status == "ok"}
        assert saved == set(by_key)
        # nothing lost: every image is in the bucket, whole, the same bytes as on disk
        objects = s3.objects(bucket)
        check_names(objects, "k/")
        assert sorted(objects.values()) == sorted(images(out / "team").values())
        summary = json.loads((out / "team/summary.json").read_text())
        assert summary["upload_failed"] == 0
        assert summary["uploaded"] == 12 - len(before)  # the cut-off uploads, caught up


async def test_no_credentials_at_all_is_named_as_such(tmp_path, s3, aws_env, monkeypatch):
    bucket = s3.bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": "us-east-1"}
    cache = opened(f"s3://{bucket}/x", env)
    with pytest.raises(CacheError, match="no credentials found; set AWS_ACCESS_KEY_ID"):
        await cache.check()


@pytest.mark.parametrize("kind", ["s3", "folder"])
async def test_two_writers_of_one_key_at_once_leave_whole_objects_only(tmp_path, s3, aws_env,
                                                                       kind):
    from runner_helpers import image_bytes, make_job

    from imagebatch.storage import metadata

    if kind == "s3":
        bucket = s3.bucket()
        cache = opened(f"s3://{bucket}/w", aws_env)
    else:
        cache = opened(str(tmp_path), {})
    job = make_job()
    same = metadata.embed(image_bytes(), job.body)
    other = metadata.embed(image_bytes(color=(1, 2, 3)), job.body)
    wrote = await asyncio.gather(*(cache.put(job.key, "local", same, "png") for _ in range(8)))
    assert sorted(wrote) == [False] * 7 + [True]  # written once; the others found it there
    assert await cache.put(job.key, "local", other, "png") is True  # another image: its own
    found = (await cache.index(["local"]))[job.key]
    assert len(found) == 2
    for entry in found:
        data = await cache.get(entry)
        assert hashlib.sha256(data).hexdigest() == entry.sha256 and data in (same, other)


SECRET = "p4ss-NOT-REAL-7f3e9a"  # distinctive, so a scan for it cannot miss


def _everything_under(root: Path) -> bytes:
    """Every file under `root` (summary.json, results.jsonl, images, pages) as one blob."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()) \
        if root.exists() else b""


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
async def test_an_endpoint_with_credentials_in_it_is_refused_before_anything_is_sent(
        tmp_path, s3, aws_env, monkeypatch, capsys, variable):
    bucket = s3.bucket()
    manifest = _manifest(tmp_path, count=2)
    # moto would take it (the userinfo is sent along and ignored): refused anyway, since
    # every error of the store would print it
    monkeypatch.setenv(variable, s3.endpoint.replace("http://", f"http://ci-user:{SECRET}@"))
    from imagebatch.cli import main

    async with running_server(api_options()) as srv:
        monkeypatch.setenv("DIFFUSION_URL", srv.url)
        monkeypatch.setenv("DIFFUSION_KEY", KEY)
        out = tmp_path / "out"
        for argv in (["run", str(manifest)], ["status", str(manifest), "--cache"],
                     ["plan", str(manifest)], ["pull", str(manifest)],
                     ["push", str(manifest)]):
            monkeypatch.setenv("IMAGEBATCH_CACHE", f"s3://{bucket}/x")
            code = await asyncio.to_thread(main, [*argv, "--out", str(out)])
            captured = capsys.readouterr()
            assert code == 2, argv
            assert f"{variable} has credentials in it" in captured.err, argv
            assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
            assert SECRET not in captured.out + captured.err and "ci-user" not in captured.err
            assert SECRET.encode() not in _everything_under(out)
        assert srv.stats.requests == 0
    assert s3.objects(bucket) == {}  # nothing was sent to the store either


async def test_a_store_error_carrying_the_endpoints_userinfo_never_shows_it(
        tmp_path, s3, aws_env, monkeypatch):
    """Defence in depth: should such an endpoint reach the store, its error texts (which
    carry the request's URL) are scrubbed wherever they are shown."""
    from moto.server import ThreadedMotoServer

    import imagebatch.storage.cache as cache_module

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    own = type(s3)(server, f"http://{host}:{port}", port, s3.env)
    bucket = own.bucket()
    monkeypatch.setattr(cache_module, "_check_endpoint", lambda *_: None, raising=False)
    env = {**aws_env, "AWS_ENDPOINT_URL": f"http://ci-user:{SECRET}@{host}:{port}"}
    cache = opened(f"s3://{bucket}/u", env)
    plan = make_plan(4)
    out = tmp_path / "out"
    try:
        async with running_server(api_options(latency_ms=100)) as srv:

            async def stop_after_one() -> None:
                await wait_for_lines(out / "demo/results.jsonl", 1)
                await asyncio.to_thread(server.stop)

            stopper = asyncio.ensure_future(stop_after_one())
            try:
                report, err = await run_with_cache(plan, srv.url, out, cache, concurrency=1)
            finally:
                await stopper
    finally:
        server.stop()
    p = report.plans[0]
    assert p.succeeded == 4 and p.upload_failed >= 1
    assert SECRET not in err and "ci-user" not in err
    assert SECRET.encode() not in _everything_under(out)  # summary.json, results.jsonl, ...
    assert "upload of" in err and f"http://{host}:{port}/" in err  # the URL, without userinfo
    assert (out / "demo/summary.json").is_file() and (out / "demo/results.jsonl").is_file()
    with pytest.raises(CacheError) as caught:  # and at the check, the store unreachable
        await cache.check()
    assert SECRET not in str(caught.value)


async def test_pull_from_a_read_only_cache_says_what_really_happened(tmp_path, s3, aws_env):
    import requests

    bucket = s3.bucket()
    url = f"s3://{bucket}/ro"
    manifest = _manifest(tmp_path, count=3)
    client = s3.client()
    async with running_server(api_options()) as srv:
        env = {**aws_env, "DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        plans = load_plans([str(manifest)], env, "DIFFUSION")
        await run_with_cache(plans, srv.url, tmp_path / "ci", opened(url, aws_env))
    # one object corrupted (a byte flipped, its name unchanged)
    name, data = sorted(s3.objects(bucket).items())[0]
    client.put_object(Bucket=bucket, Key=name, Body=data[:100] + bytes([data[100] ^ 0xFF])
                      + data[101:])
    # a key that may list and read, not delete: moto checks it once auth is on
    iam = boto3_iam(s3)
    iam.create_user(UserName=f"reader-{bucket}")
    iam.put_user_policy(UserName=f"reader-{bucket}", PolicyName="read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:List*", "s3:GetObject"], "Resource": "*"}]}))
    made = iam.create_access_key(UserName=f"reader-{bucket}")["AccessKey"]
    reader = {**env, "AWS_ACCESS_KEY_ID": made["AccessKeyId"],
              "AWS_SECRET_ACCESS_KEY": made["SecretAccessKey"]}
    out, err = io.StringIO(), io.StringIO()
    share = Share(manifest=str(manifest), out_dir=tmp_path / "laptop", cache=url, post=False)
    await asyncio.to_thread(requests.post, f"{s3.endpoint}/moto-api/reset-auth", data=b"0",
                            timeout=10)
    try:
        code = await asyncio.to_thread(pull_command, share, reader, out, err)
    finally:
        await asyncio.to_thread(requests.post, f"{s3.endpoint}/moto-api/reset-auth",
                                data=b"inf", timeout=10)
    assert code == 0
    warning = err.getvalue()
    assert "do not match the SHA-256" in warning
    assert "left in the cache, which refused to delete it" in warning
    assert "removed" not in warning and "cannot remove" not in warning
    assert "stays missing here" in warning and "generat" not in warning  # pull makes nothing
    assert made["SecretAccessKey"] not in warning
    said = out.getvalue()
    assert "pulled 2 image(s)" in said and "0 not in the cache" in said
    assert "1 with no good object in it" in said
    assert "1 bad object(s) skipped (0 removed from the cache)" in said
    assert s3.objects(bucket)[name] != data  # still there, as the warning says
    for blob in images(tmp_path / "laptop/team").values():
        with Image.open(io.BytesIO(blob)) as image:
            image.load()


def boto3_iam(s3):  # noqa: ANN001, ANN201 - the fixture's holder, boto3's client
    """An IAM client of the moto server (the same endpoint serves IAM and S3)."""
    import boto3

    return boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


async def test_pull_with_no_images_for_this_backend_names_the_one_that_made_them(
        tmp_path, s3, aws_env):
    bucket = s3.bucket()
    url = f"s3://{bucket}/h"
    manifest = _manifest(tmp_path, count=3)
    hosted = "https://us.inference.heroku.com"
    async with running_server(api_options()) as srv:
        env = {**aws_env, "DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        (plan,) = load_plans([str(manifest)], env, "DIFFUSION")
        await run_with_cache(plan, srv.url, tmp_path / "made", None)
    # the bucket holds every image as the hosted service's (what CI made and uploaded)
    cache = opened(url, aws_env)
    for job in plan.jobs:
        blob = (tmp_path / "made/team/images" / job.path).read_bytes()
        assert await cache.put(job.key, hosted, blob, job.ext)
    laptop = tmp_path / "laptop"
    share = Share(manifest=str(manifest), out_dir=laptop, cache=url, post=False)
    out, err = io.StringIO(), io.StringIO()
    assert await asyncio.to_thread(pull_command, share, aws_env, out, err) == 0  # no URL
    assert "pulled 0 image(s)" in out.getvalue() and "3 not in the cache" in out.getvalue()
    assert err.getvalue() == (
        f"note: the cache holds 3 of the 3 missing image(s) made by {hosted}, none by the "
        f"embedded server; set DIFFUSION_URL={hosted} to pull them\n")
    # doing what it says pulls them (pull sends nothing: no key needed, no server)
    out, err = io.StringIO(), io.StringIO()
    assert await asyncio.to_thread(pull_command, share, {**aws_env, "DIFFUSION_URL": hosted},
                                   out, err) == 0
    assert "pulled 3 image(s)" in out.getvalue() and err.getvalue() == ""
    assert len(images(laptop / "team")) == 3
    # and the other way round: images of the embedded server, a URL set here
    local = f"s3://{bucket}/l"
    cache = opened(local, aws_env)
    for job in plan.jobs[:2]:
        blob = (tmp_path / "made/team/images" / job.path).read_bytes()
        await cache.put(job.key, "local", blob, job.ext)
    out, err = io.StringIO(), io.StringIO()
    share = Share(manifest=str(manifest), out_dir=tmp_path / "other", cache=local, post=False)
    await asyncio.to_thread(pull_command, share, {**aws_env, "DIFFUSION_URL": hosted}, out, err)
    assert "2 of the 3 missing image(s) made by the embedded server, none by " \
           f"{hosted}; pull with --local to pull them" in err.getvalue()


@pytest.mark.slow
async def test_status_plan_and_diff_with_an_s3_cache_exit_0_every_time(tmp_path, s3, aws_env):
    """They used to abort (SIGABRT, exit 134) about one run in four after printing: the
    store's runtime thread still calling into Python as the interpreter shut down.

    The three commands share that cause: 8 runs of each (a process each, forked from an
    interpreter that has imported imagebatch but no S3 client, so each starts the store's
    runtime and shuts it down as a fresh one does) miss it with odds of 0.75**24, about one in
    a thousand; `make soak` runs 50 of each, as it first did (0.75**150)."""
    bucket = s3.bucket()
    url = f"s3://{bucket}/x"
    manifest = _manifest(tmp_path, count=3)
    older = _manifest(tmp_path, name="older", count=2)
    older.write_text(older.read_text().replace("name: older", "name: team"))
    env = {**os.environ, **aws_env, "IMAGEBATCH_CACHE": url}
    out = str(tmp_path / "out")
    commands = {
        "status": ["status", str(manifest), "--cache", "--out", out],
        "plan": ["plan", str(manifest), "--out", out],
        "diff": ["diff", str(manifest), "--against", str(older), "--out", out],
    }
    gate = asyncio.Semaphore(8)  # processes at once

    async def once(argv: list[str]) -> tuple[int | None, bytes]:
        async with gate:  # a process of its own each, forked (stress_helpers.Forker)
            done = await asyncio.to_thread(run_forked, argv, env, tmp_path)
            return done.returncode, (done.stdout + done.stderr).encode()

    times = scale(50, 8)
    runs = {name: [once(argv) for _ in range(times)] for name, argv in commands.items()}
    results = {name: await asyncio.gather(*aws) for name, aws in runs.items()}
    for name, done in results.items():
        codes = [code for code, _ in done]
        assert codes == [0] * times, (name, codes, next(t for c, t in done if c)[-500:])
        assert all(b"restorable from the cache" in t or b"cache s3://" in t
                   or b"would send" in t for _, t in done), name

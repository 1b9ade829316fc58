"""The shared cache in a folder (a team share), and its parts: naming, verification,
records, summaries, `status --cache`, the checks at start."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from cache_helpers import api_options, check_names, images, opened, run_with_cache
from runner_helpers import KEY, image_bytes, make_job, make_plan

from imagebatch.cli import main
from imagebatch.commands.share import Share, pull_command, push_command
from imagebatch.commands.status import status_command
from imagebatch.planning import config
from imagebatch.running.cache import Transfers, restore, verify
from imagebatch.running.summary import RunReport, markdown, plan_doc, text
from imagebatch.service.server import running_server
from imagebatch.storage import metadata
from imagebatch.storage.cache import (
    CacheError,
    Entry,
    backend_id,
    cache_url,
    object_name,
    open_cache,
    restorable,
)
from imagebatch.storage.store import Record, Store, read_records

MANIFEST = """\
version: 1
name: shared
defaults:
  aspect_ratio: "1:1"
jobs:
  - id: owl
    prompt: "an owl at dusk"
    seeds: {start: 1, count: 4}
"""


def _objects(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


async def test_a_folder_cache_restores_a_deleted_run_byte_for_byte_with_no_request(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(4)
    out = tmp_path / "out"
    async with running_server(api_options()) as srv:
        first, _ = await run_with_cache(plan, srv.url, out, cache)
        assert first.plans[0].uploaded == 4
        made = images(out / "demo")
        objects = _objects(share)
        check_names(objects)
        assert sorted(objects.values()) == sorted(made.values())
        shutil.rmtree(out)
        second, _ = await run_with_cache(plan, srv.url, out, cache, post=True)
        assert srv.stats.requests == 4
        assert second.plans[0].restored == 4 and second.plans[0].requests == 0
        assert images(out / "demo") == made
        assert (out / "demo/index.html").is_file()
        assert (out / "demo/contact-sheet.png").is_file()
        assert _objects(share) == objects  # nothing written twice, nothing changed


async def test_an_image_by_another_backend_never_stands_in(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(f"file://{share}", {})
    plan = make_plan(3)
    async with running_server(api_options()) as one, running_server(api_options()) as two:
        await run_with_cache(plan, one.url, tmp_path / "a", cache)
        report, _ = await run_with_cache(plan, two.url, tmp_path / "b", cache)
        assert report.plans[0].restored == 0 and report.plans[0].succeeded == 3
        assert two.stats.requests == 3
        # each backend's images under its own folder of the cache
        folders = {name.split("/")[1] for name in _objects(share)}
        assert folders == {backend_id(one.url), backend_id(two.url)}


async def test_a_pools_members_count_alike(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    cache = opened(str(share), {})
    plan = make_plan(2)
    async with running_server(api_options()) as one:
        await run_with_cache(plan, one.url, tmp_path / "a", cache)
    store = Store(tmp_path / "pool", "demo", "x,y", members={"D1": "other", "D2": one.url})
    store.prepare()
    try:
        transfers = Transfers(cache, io.StringIO())
        transfers.index = await cache.index(store.backends)
        done = await restore(transfers, store, plan.jobs)
    finally:
        store.close()
    assert done == {j.key for j in plan.jobs}
    assert {r.backend for r in read_records(tmp_path / "pool/demo/results.jsonl")} == {one.url}


def _entry(job, blob: bytes, sha: str | None = None, ext: str = "png") -> Entry:
    sha = sha or hashlib.sha256(blob).hexdigest()
    return Entry(job.key, sha, ext, "local", object_name(job.key, "local", sha, ext))


def test_verify_takes_only_this_jobs_whole_image():
    job, other = make_job(0, seed=1), make_job(1, seed=2)
    blob = metadata.embed(image_bytes(), job.body)
    assert verify(_entry(job, blob), blob, job) is None
    assert "SHA-256" in verify(_entry(job, blob), blob[:-10], job)
    cut = blob[: len(blob) // 2]
    assert "truncated" in verify(_entry(job, cut), cut, job) or "corrupt" in verify(
        _entry(job, cut), cut, job)
    foreign = metadata.embed(image_bytes(), other.body)
    assert verify(_entry(job, foreign), foreign, job) == "it carries another job's request"
    bare = image_bytes()  # no request at all is not "another job's"
    assert verify(_entry(job, bare), bare, job) == (
        "it carries no embedded request (not an image imagebatch saved)")
    small = metadata.embed(image_bytes(size=(64, 64)), job.body)
    assert "64x64" in verify(_entry(job, small), small, job)
    assert "jpg" in verify(_entry(job, blob, ext="jpg"), blob, job)


def test_object_names_and_backend_folders_carry_no_credential():
    key, sha = "ab" + "0" * 62, "f" * 64
    assert object_name(key, "local", sha, "png") == f"v1/local/ab/{key}.{sha}.png"
    name = config.backend_name("https://user:hunter2@us.inference.heroku.com:443/")
    folder = backend_id(name)
    assert "hunter2" not in folder and "user" not in folder and "/" not in folder
    assert folder.startswith("us.inference.heroku.com-")
    assert backend_id("https://a.example/x") != backend_id("https://a.example/x/")


def test_a_staging_file_or_stray_is_not_an_object(tmp_path):
    import asyncio

    cache = opened(str(tmp_path), {})
    job = make_job()
    blob = metadata.embed(image_bytes(), job.body)
    real = tmp_path / object_name(job.key, "local", hashlib.sha256(blob).hexdigest(), "png")
    real.parent.mkdir(parents=True)
    (real.parent / (real.name + "#1")).write_bytes(blob[:100])  # a put cut off
    (real.parent / "notes.txt").write_text("x")
    assert asyncio.run(cache.index(["local"])) == {}
    real.write_bytes(blob)
    found = asyncio.run(cache.index(["local"]))
    assert list(found) == [job.key]
    assert restorable(cache, [job, make_job(1, seed=9)], ["local"]) == {job.key}
    assert restorable(cache, [job], ["https://elsewhere.example"]) == frozenset()


def test_opening_a_cache_refuses_what_cannot_work_without_echoing_secrets(tmp_path):
    with pytest.raises(CacheError, match="unknown cache scheme 'https'"):
        open_cache("https://bucket.example/x", {})
    with pytest.raises(CacheError, match="no such folder"):
        open_cache(str(tmp_path / "missing"), {})
    with pytest.raises(CacheError) as caught:
        open_cache("s3://AKIA123:s3cr3t@bucket/p", {})
    assert "s3cr3t" not in str(caught.value) and "AKIA123" not in str(caught.value)
    with pytest.raises(CacheError, match="names no bucket"):
        open_cache("s3:///p", {})
    with pytest.raises(CacheError, match="file:///PATH"):
        open_cache("file://server/share", {})
    assert cache_url(None, {}) is None
    assert cache_url(None, {"IMAGEBATCH_CACHE": "  "}) is None
    assert cache_url(None, {"IMAGEBATCH_CACHE": "s3://b/p"}) == ("s3://b/p", "IMAGEBATCH_CACHE")
    assert cache_url("/x", {"IMAGEBATCH_CACHE": "s3://b/p"}) == ("/x", "--cache")


def test_cli_unknown_scheme_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setenv("IMAGEBATCH_CACHE", "gopher://x")
    assert main(["run", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "IMAGEBATCH_CACHE" in err and "unknown cache scheme" in err
    assert not (tmp_path / "out").exists()


def test_records_say_when_an_image_came_from_the_cache_and_old_lines_still_read(tmp_path):
    old = {"key": "k", "path": "p.png", "status": "ok", "backend": "local", "attempts": 1,
           "error": None, "sha256": "s", "bytes": 1, "seconds": 0.1, "created": None}
    assert Record.from_dict(old).source is None
    assert "source" not in json.loads(Record.from_dict(old).to_line())
    rec = Record.from_dict({**old, "source": "cache"})
    assert rec.source == "cache" and json.loads(rec.to_line())["source"] == "cache"


def test_summaries_count_restored_uploaded_and_failed_uploads():
    from imagebatch.running.summary import PlanReport

    plan = PlanReport(name="n", manifest="m", backend="local", shard=None, out="o",
                      planned=5, succeeded=1, skipped=1, failed=0, pending=0, requests=1,
                      seconds=1.0, interrupted=False, cache="s3://b/p", restored=3,
                      uploaded=1, upload_failed=1)
    doc = plan_doc(plan)
    assert (doc["cache"], doc["restored"], doc["uploaded"], doc["upload_failed"]) == (
        "s3://b/p", 3, 1, 1)
    report = RunReport((plan,))
    assert "3 restored from the cache" in text(report)
    assert "1 uploaded, 1 failed to upload" in text(report)
    assert "| `n` | `s3://b/p` | 3 | 1 | 1 |" in markdown(report)
    without = PlanReport(**{**{f: getattr(plan, f) for f in plan.__slots__}, "cache": None})
    assert "restored" not in plan_doc(without) and "cache" not in markdown(RunReport((without,)))


async def test_status_counts_what_the_cache_fills_and_pull_push_move_it(tmp_path):
    import asyncio

    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    share = tmp_path / "share"
    share.mkdir()
    async with running_server(api_options()) as srv:
        env = {"DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        push = Share(manifest=str(manifest), out_dir=tmp_path / "ci", cache=str(share))
        out = io.StringIO()
        # nothing done yet: nothing to push
        assert await asyncio.to_thread(push_command, push, env, out, io.StringIO()) == 0
        assert "pushed 0 image(s)" in out.getvalue() and "4 not done here" in out.getvalue()
        from imagebatch.planning.manifest import load_plans

        (plan,) = load_plans([str(manifest)], env, "DIFFUSION")
        await run_with_cache(plan, srv.url, tmp_path / "ci", None)  # made without the cache
        assert _objects(share) == {}
        out = io.StringIO()
        assert await asyncio.to_thread(push_command, push, env, out, io.StringIO()) == 0
        assert "pushed 4 image(s)" in out.getvalue()
        out = io.StringIO()
        await asyncio.to_thread(push_command, push, env, out, io.StringIO())
        assert "pushed 0 image(s)" in out.getvalue() and "4 already there" in out.getvalue()

        out = io.StringIO()
        await asyncio.to_thread(lambda: status_command(
            str(manifest), out_dir=tmp_path / "laptop", env=env, out=out, cache=str(share)))
        assert "4 of the 4 jobs not done can be restored" in out.getvalue()
        out = io.StringIO()
        await asyncio.to_thread(lambda: status_command(
            str(manifest), out_dir=tmp_path / "laptop", env=env, out=out, as_json=True,
            cache=str(share)))
        doc = json.loads(out.getvalue())
        assert doc["restorable"] == 4 and doc["pending"] == 4
        assert not (tmp_path / "laptop").exists()  # status downloads nothing

        pull = Share(manifest=str(manifest), out_dir=tmp_path / "laptop", cache=str(share))
        out = io.StringIO()
        assert await asyncio.to_thread(pull_command, pull, env, out, io.StringIO()) == 0
        assert "pulled 4 image(s)" in out.getvalue()
        assert images(tmp_path / "laptop/shared") == images(tmp_path / "ci/shared")
        assert srv.stats.requests == 4
        with pytest.raises(Exception, match="no cache"):
            await asyncio.to_thread(pull_command, Share(manifest=str(manifest)), env)


@pytest.mark.parametrize("path", [".github/workflows/imagebatch.yml",
                                  "pipeline/templates/init/workflow.yml"])
def test_the_scheduled_workflows_use_the_cache_when_the_variable_is_set(path):
    import yaml

    root = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / path).read_text().replace("@IMAGEBATCH_REQUIREMENT@", "x"))
    steps = doc["jobs"]["generate"]["steps"]
    (generate,) = [s for s in steps if s.get("name") == "Generate"]
    assert generate["env"]["IMAGEBATCH_CACHE"] == "${{ vars.IMAGEBATCH_CACHE }}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert generate["env"][name] == f"${{{{ secrets.{name} }}}}"
    # the Actions cache only stands in while there is no shared cache
    actions_cache = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache/")]
    assert len(actions_cache) == 2
    assert all("vars.IMAGEBATCH_CACHE == ''" in s["if"] for s in actions_cache)


async def test_plan_counts_what_the_cache_would_fill_and_prices_only_the_rest(tmp_path):
    import asyncio
    import dataclasses

    from imagebatch.commands.preview import plan_command
    from imagebatch.planning.manifest import load_plans

    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    share = tmp_path / "share"
    share.mkdir()
    async with running_server(api_options()) as srv:
        env = {"DIFFUSION_URL": srv.url, "DIFFUSION_KEY": KEY}
        (plan,) = load_plans([str(manifest)], env, "DIFFUSION")
        # another machine made two of the four jobs into the cache
        await run_with_cache(dataclasses.replace(plan, jobs=plan.jobs[:2]), srv.url,
                             tmp_path / "ci", opened(str(share), {}))
        sent = srv.stats.requests

        def plan_of(**kw: object) -> str:
            out = io.StringIO()
            assert plan_command(str(manifest), env=kw.pop("env", env), out=out,
                                out_dir=tmp_path / "laptop", **kw) == 0  # type: ignore[arg-type]
            return out.getvalue()

        text_out = await asyncio.to_thread(plan_of, cache=str(share), price="0.08")
        assert "2 restorable from the cache, 2 to send" in text_out
        assert "estimated cost: $0.16 (2 requests" in text_out
        # $IMAGEBATCH_CACHE is read as `run` reads it
        counted = json.loads(await asyncio.to_thread(
            plan_of, env={**env, "IMAGEBATCH_CACHE": str(share)}, counts_json=True))
        assert (counted["restorable"], counted["to_send"], counted["done"]) == (2, 2, 0)
        # without a cache, nothing is looked up: "no cache set", every job to send
        assert "no cache set, 4 to send" in await asyncio.to_thread(plan_of)
        assert srv.stats.requests == sent  # plan sent nothing
        assert not (tmp_path / "laptop").exists()  # and downloaded nothing


@pytest.mark.parametrize(("url", "words"), [
    ("s3://team//x", "has an empty part (two slashes in a row)"),
    ("s3://team/a//b", "has an empty part (two slashes in a row)"),
    ("s3://team/../x", "has a '..' part"),
    ("s3://team/./x", "has a '.' part"),
    ("s3://team/x/..", "has a '..' part"),
])
def test_a_prefix_with_an_empty_dot_or_dot_dot_part_is_named_exit_2(tmp_path, capsys, url,
                                                                      words):
    with pytest.raises(CacheError) as caught:
        open_cache(url, {})
    assert words in str(caught.value) and caught.value.exit_code == 2
    (tmp_path / "m.yaml").write_text(MANIFEST)
    code = main(["status", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out"),
                 "--cache", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and words in err and "--cache" in err
    assert "ValueError" not in err and "Traceback" not in err
    # a trailing slash is what people write: the same prefix as without it
    assert open_cache("s3://team/x/", {}).url == open_cache("s3://team/x", {}).url == \
        "s3://team/x"


def test_a_file_given_as_the_cache_is_called_a_file_not_a_missing_folder(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    for url in (str(tmp_path / "m.yaml"), f"file://{tmp_path / 'm.yaml'}"):
        with pytest.raises(CacheError, match="is a file, not a folder") as caught:
            open_cache(url, {})
        assert "no such folder" not in str(caught.value)
    code = main(["pull", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out"),
                 "--cache", str(tmp_path / "m.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1


def test_status_cache_before_or_after_the_manifest_reads_the_manifest_as_one(
        tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    share, other = tmp_path / "share", tmp_path / "other"
    share.mkdir()
    other.mkdir()
    monkeypatch.setenv("IMAGEBATCH_CACHE", str(share))
    out = ["--out", str(tmp_path / "out")]
    for argv in (["status", "--cache", str(manifest)], ["status", str(manifest), "--cache"],
                 ["status", "--cache", "--json", str(manifest)]):
        assert main([*argv, *out]) == 0, argv
        printed = capsys.readouterr().out
        assert "4 jobs" in printed or '"planned": 4' in printed, argv
        assert str(share) in printed, argv  # the cache is $IMAGEBATCH_CACHE's
    # a URL after --cache is still the cache's, the manifest after it the manifest
    assert main(["status", "--cache", str(other), str(manifest), *out]) == 0
    assert f"cache {other}: 0 of the 4 jobs" in capsys.readouterr().out
    # a cache URL and no manifest: the manifest is missing, not a manifest named s3://...
    assert main(["status", "--cache", "s3://team/x", *out]) == 2
    assert "required: MANIFEST" in capsys.readouterr().err
    assert main(["status", *out]) == 2
    assert "required: MANIFEST" in capsys.readouterr().err
    assert main(["status", "--help"]) == 0
    assert "[MANIFEST]" not in capsys.readouterr().out  # required, as the usage says


def test_a_backend_folder_tells_its_backend_when_it_can():
    from imagebatch.storage.cache import backend_of

    for name in ("https://us.inference.heroku.com", "http://images.example/api/v2",
                 "local"):
        assert backend_of(backend_id(name)) == name
    # a port is not kept in clear: the folder cannot tell the whole URL back
    assert backend_of(backend_id("http://127.0.0.1:8000")) is None
    assert backend_of("us.inference.heroku.com-000000000000") is None  # not its hash

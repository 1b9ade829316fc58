"""The Stability provider end to end: which provider the environment names, keys per
provider (Heroku's unchanged), fields a provider lacks refused at their location,
image-to-image keys, whole runs against the embedded server's Stability path (content
filtered, the lockout, the seed recorded), a pool mixing providers, `serve` serving both,
and the review page's "more like this" snippet."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml
from PIL import Image
from stress_helpers import leaks

from imagebatch.assets.variations import (
    InputExists,
    input_path,
    save_input,
    variation_job,
    variation_snippet,
)
from imagebatch.cli import main
from imagebatch.errors import ConfigError, ManifestError
from imagebatch.planning import apispec, config
from imagebatch.planning.manifest import load_plan, load_plans
from imagebatch.planning.plan import canonical_json, job_key
from imagebatch.providers import connect
from imagebatch.providers.heroku import HEROKU
from imagebatch.providers.stability import STABILITY
from imagebatch.running.client import ApiClient
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.service.server import ServerOptions, running_server
from imagebatch.storage.metadata import read_request
from imagebatch.storage.store import DONE, job_states

ROOT = Path(__file__).resolve().parent.parent
HKEY = "inf-HEROKU-0a1b2c3d4e5f-test"
SKEY = "sk-STABILITY-9f8e7d6c5b4a-test"

SIMPLE = "version: 1\nname: g\njobs:\n  - id: a\n    prompt: a fox\n    seeds: [5]\n"




def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def png(size=(640, 512), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# -- which provider --------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "prefix", "provider", "url", "key_variable"), [
    ({}, "DIFFUSION", "heroku", None, "DIFFUSION_KEY"),
    ({"DIFFUSION_URL": "https://us.inference.heroku.com", "DIFFUSION_KEY": HKEY},
     "DIFFUSION", "heroku", "https://us.inference.heroku.com", "DIFFUSION_KEY"),
    ({"STABILITY_API_KEY": SKEY}, "DIFFUSION", "stability", "https://api.stability.ai",
     "STABILITY_API_KEY"),
    ({"STABILITY_API_KEY": SKEY}, "STABILITY", "stability", "https://api.stability.ai",
     "STABILITY_API_KEY"),
    ({"P_URL": "https://api.stability.ai/v2beta/stable-image/generate/ultra", "P_KEY": SKEY},
     "P", "stability", "https://api.stability.ai", "P_KEY"),
    ({"P_PROVIDER": "stability"}, "P", "stability", None, "P_KEY"),  # the embedded server
    ({"P_PROVIDER": "Stability", "P_URL": "http://127.0.0.1:9", "P_KEY": SKEY}, "P",
     "stability", "http://127.0.0.1:9", "P_KEY"),
    # a Heroku URL set: STABILITY_API_KEY changes nothing
    ({"DIFFUSION_URL": "https://us.inference.heroku.com", "DIFFUSION_KEY": HKEY,
      "STABILITY_API_KEY": SKEY}, "DIFFUSION", "heroku", "https://us.inference.heroku.com",
     "DIFFUSION_KEY"),
    # only DIFFUSION and STABILITY read STABILITY_API_KEY alone
    ({"STABILITY_API_KEY": SKEY}, "OTHER", "heroku", None, "OTHER_KEY"),
])
def test_the_environment_names_the_provider(env, prefix, provider, url, key_variable):
    conn = connect.connection(env, prefix)
    assert (conn.provider.name, conn.url, conn.key_variable) == (provider, url, key_variable)
    assert SKEY not in repr(conn) and HKEY not in repr(conn)


def test_a_bad_provider_and_a_stability_url_without_a_key_are_config_errors():
    with pytest.raises(ConfigError, match="DIFFUSION_PROVIDER is 'dall-e': use one of heroku, "
                                          "stability"):
        connect.connection({"DIFFUSION_PROVIDER": "dall-e"})
    with pytest.raises(ConfigError, match="DIFFUSION_KEY is not.*Stability AI API key"):
        connect.connection({"DIFFUSION_URL": "https://api.stability.ai"})
    with pytest.raises(ConfigError, match="serves stable-image-ultra only"):
        connect.connection({"STABILITY_API_KEY": SKEY, "STABILITY_MODEL_ID": "sd3"}, "STABILITY")


def test_a_pool_may_mix_providers_and_status_names_each_members_backend():
    env = {"A_URL": "https://us.inference.heroku.com", "A_KEY": HKEY,
           "B_PROVIDER": "stability", "B_KEY": SKEY}
    members, notes = connect.pool(env, ["A", "B"])
    assert [(m.prefix, m.provider.name, m.url) for m in members] == [
        ("A", "heroku", "https://us.inference.heroku.com"),
        ("B", "stability", "https://api.stability.ai")]
    assert notes == []
    assert connect.status_backends(env, ["A", "B"], False) == {
        "A": "https://us.inference.heroku.com", "B": "https://api.stability.ai"}
    assert connect.providers(env, ["A", "B"]) == (HEROKU, STABILITY)


# -- keys -----------------------------------------------------------------------------------

def test_heroku_keys_and_bodies_are_what_they_were_and_stability_keys_differ(tmp_path):
    path = str(write(tmp_path, SIMPLE))
    (heroku,) = load_plan(path).jobs
    (stability,) = load_plan(path, providers=(STABILITY,)).jobs
    # pinned text: the body Heroku is sent, and its key, as before providers existed
    assert heroku.body == '{"model":"stable-image-ultra","prompt":"a fox","seed":5}'
    assert heroku.key == hashlib.sha256(
        b'{"model":"stable-image-ultra","prompt":"a fox","seed":5}').hexdigest()
    assert stability.body == ('{"model":"stable-image-ultra","prompt":"a fox",'
                              '"provider":"stability","seed":5}')
    assert stability.key == job_key(stability.request) != heroku.key
    assert stability.path == heroku.path


def test_every_example_manifest_plans_exactly_as_before_for_heroku(capsys):
    examples = sorted((ROOT / "manifests").glob("*.yaml"))
    assert examples
    for example in examples:
        assert main(["plan", str(example), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        for item in doc:
            assert "provider" not in item["request"]
            assert item["key"] == hashlib.sha256(
                canonical_json(item["request"]).encode()).hexdigest()


def test_image_to_image_keys_follow_the_input_images_bytes_not_its_name(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").write_bytes(png())  # the same bytes under another name
    text = ("version: 1\nname: v\njobs:\n  - id: more\n    prompt: p\n    image: {}\n"
            "    strength: 0.4\n    seeds: [3]\n")
    first = load_plan(str(write(tmp_path, text.format("a.png"))), providers=(STABILITY,))
    same = load_plan(str(write(tmp_path, text.format("b.png"))), providers=(STABILITY,))
    (job,) = first.jobs
    digest = hashlib.sha256(png()).hexdigest()
    assert job.request["image"] == f"sha256:{digest}" and job.request["strength"] == 0.4
    assert job.image == str(tmp_path / "a.png")
    assert same.jobs[0].key == job.key
    (tmp_path / "a.png").write_bytes(png(color=(0, 0, 255)))
    changed = load_plan(str(write(tmp_path, text.format("a.png"))), providers=(STABILITY,))
    assert changed.jobs[0].key != job.key
    weaker = load_plan(str(write(tmp_path, text.format("a.png").replace("0.4", "0.6"))),
                       providers=(STABILITY,))
    assert weaker.jobs[0].key != changed.jobs[0].key


# -- refused fields, with their location ----------------------------------------------------

def problems(path: Path, providers) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_plan(str(path), providers=providers)
    return [str(p) for p in info.value.problems]


def test_a_field_the_provider_lacks_is_refused_at_its_location(tmp_path):
    path = write(tmp_path, "version: 1\ndefaults:\n  size: 1344x768\njobs:\n  - id: a\n"
                           "    prompt: p\n    matrix:\n      size: [1024x1024]\n")
    found = problems(path, (STABILITY,))
    assert f"{path}:3:3: defaults.size: the stability provider has no `size` field" in \
        found[0]
    assert found[1].startswith(f"{path}:8:7: jobs[0].matrix.size: the stability provider")
    assert "aspect_ratio instead" in found[0]
    # and for Heroku, image-to-image and webp
    (tmp_path / "i.png").write_bytes(png())
    path = write(tmp_path, "version: 1\njobs:\n  - id: a\n    prompt: p\n    image: i.png\n"
                           "    strength: 0.5\n    output_format: webp\n")
    found = problems(path, (HEROKU,))
    assert found[0].startswith(f"{path}:5:5: jobs[0].image: the heroku provider has no "
                               "`image` field")
    assert found[1].startswith(f"{path}:6:5: jobs[0].strength: the heroku provider")
    assert found[2].startswith(f"{path}:7:20: jobs[0].output_format: the heroku provider "
                               "makes only png, jpeg, and this run sends to it; 'webp' needs "
                               "the stability provider (the provider comes from the "
                               "environment: set DIFFUSION_PROVIDER=stability")
    assert "set DIFFUSION_PROVIDER=stability" in found[0]  # image-to-image says it too
    # a mixed pool allows only what both providers have
    assert len(problems(path, (HEROKU, STABILITY))) == 3


def test_image_to_image_inputs_are_checked_before_anything_is_sent(tmp_path):
    (tmp_path / "tiny.png").write_bytes(png((32, 32)))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "ok.png").write_bytes(png())
    path = write(tmp_path, "version: 1\njobs:\n"
                           "  - id: a\n    prompt: p\n    image: missing.png\n    strength: 1\n"
                           "  - id: b\n    prompt: p\n    image: tiny.png\n    strength: 0.2\n"
                           "  - id: c\n    prompt: p\n    image: text.png\n    strength: 0.2\n"
                           "  - id: d\n    prompt: p\n    strength: 0.2\n"
                           "  - id: e\n    prompt: p\n    image: ok.png\n")
    found = problems(path, (STABILITY,))
    assert "5:12: jobs[0].image: cannot read the input image 'missing.png'" in found[0]
    assert "9:12: jobs[1].image: the input image 'tiny.png' is 32x32" in found[1]
    assert "13:12: jobs[2].image: the input image 'text.png' is not a PNG" in found[2]
    assert "17:5: jobs[3].strength: strength goes with an input image" in found[3]
    assert "20:5: jobs[4].image: an image-to-image job needs strength" in found[4]
    assert len(found) == 5


def png_of_exactly(size: int, pixels: tuple[int, int] = (640, 512)) -> bytes:
    """A valid PNG of exactly `size` bytes: a picture, padded by a private ancillary chunk
    (which readers skip) before its end."""
    base = png(pixels)
    pad = size - len(base) - 12
    assert pad >= 0
    end = base.rindex(b"IEND") - 4
    chunk = struct.pack(">I", pad) + b"prIv" + bytes(pad)
    return base[:end] + chunk + struct.pack(">I", zlib.crc32(chunk[4:])) + base[end:]


def test_ultras_own_input_image_rules_are_checked_at_planning(tmp_path):
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 60)).save(photo, format="JPEG", quality=90)
    (tmp_path / "photo.jpg").write_bytes(photo.getvalue())  # 12 MP: Ultra has no pixel cap
    huge = io.BytesIO()
    # 196,608,000 pixels: past Pillow's decompression-bomb guard, which guards decoding
    Image.new("1", (16384, 12000)).save(huge, format="PNG")
    (tmp_path / "huge.png").write_bytes(huge.getvalue())
    (tmp_path / "long.png").write_bytes(png((16385, 64)))
    (tmp_path / "short.png").write_bytes(png((64, 63)))
    jobs = "".join(f"  - id: {name}\n    prompt: p\n    image: {file}\n    strength: 0.5\n"
                   for name, file in (("photo", "photo.jpg"), ("huge", "huge.png"),
                                      ("long", "long.png"), ("short", "short.png")))
    path = write(tmp_path, "version: 1\njobs:\n" + jobs)
    assert problems(path, (STABILITY,)) == [
        f"{path}:13:12: jobs[2].image: the input image 'long.png' is 16385x64: each side "
        "needs 64 to 16,384 pixels",
        f"{path}:17:12: jobs[3].image: the input image 'short.png' is 64x63: each side "
        "needs 64 to 16,384 pixels"]
    path = write(tmp_path, "version: 1\njobs:\n" + jobs.split("  - id: long")[0])
    photo_job, huge_job = load_plan(str(path), providers=(STABILITY,)).jobs
    assert photo_job.image == str(tmp_path / "photo.jpg")
    assert huge_job.image == str(tmp_path / "huge.png")


def test_a_request_over_10_mib_as_sent_is_refused_at_planning_one_of_10_mib_is_sent(
        tmp_path, capsys, monkeypatch):
    source = tmp_path / "in.png"
    path = write(tmp_path, "version: 1\nname: big\njobs:\n  - id: more\n    prompt: a fox\n"
                           "    image: in.png\n    strength: 0.5\n    seeds: [7]\n")

    async def send() -> tuple[int, dict[int, int]]:
        (job,) = load_plan(str(path), providers=(STABILITY,)).jobs
        async with running_server(ServerOptions(key=SKEY, workers=1, flat=True,
                                                keep_bodies=True)) as s, \
                aiohttp.ClientSession() as session:
            await ApiClient(session, s.url, SKEY, provider=STABILITY).generate(job)
            return int(s.stats.headers[0]["Content-Length"]), dict(s.stats.by_status)

    # the form's fields and the multipart framing around the image, as the server got them
    source.write_bytes(png_of_exactly(5000))
    received, _ = asyncio.run(send())
    framing = received - 5000
    limit = 10 * 1024 * 1024
    source.write_bytes(png_of_exactly(limit - framing))
    assert asyncio.run(send()) == (limit, {200: 1})  # exactly 10 MiB: planned, sent, made

    source.write_bytes(png_of_exactly(limit - framing + 1))  # one byte more: refused unsent
    assert problems(path, (STABILITY,)) == [
        f"{path}:6:12: jobs[0].image: more seed 7: the request is 10,485,761 bytes as sent, "
        "over the 10,485,760 (10 MiB) Stability takes in one request, input image included: "
        "shrink the input image 'in.png' (fewer pixels, or JPEG or WebP at a lower quality)"]
    source.write_bytes(png_of_exactly(11_000_000))  # an 11 MB file can never be sent
    assert problems(path, (STABILITY,)) == [
        f"{path}:6:12: jobs[0].image: the input image 'in.png' is over 10,485,760 bytes, more "
        "than a whole Stability request may be (10 MiB, the image in it): shrink it (fewer "
        "pixels, or JPEG or WebP at a lower quality)"]
    monkeypatch.setenv("DIFFUSION_PROVIDER", "stability")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6:12: jobs[0].image" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing sent, nothing written


def test_validate_refuses_size_for_stability_from_the_command_line(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "version: 1\njobs:\n  - id: a\n    prompt: p\n    size: 1024x1024\n")
    monkeypatch.setenv("STABILITY_API_KEY", SKEY)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:5:5: jobs[0].size: the stability provider has no `size` field" in err
    assert SKEY not in err and "Traceback" not in err
    monkeypatch.delenv("STABILITY_API_KEY")
    assert main(["validate", str(path)]) == 0


# -- runs against the embedded server ----------------------------------------------------

def records(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name / "results.jsonl").read_text().splitlines()]


def test_a_stability_run_offline_makes_webp_records_the_seed_and_reruns_nothing(
        tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "version: 1\nname: st\ndefaults:\n  aspect_ratio: \"3:2\"\n"
                           "  output_format: webp\njobs:\n  - id: fox\n    prompt: a fox\n"
                           "    seeds: [11, 12]\n  - id: veiled\n    prompt: \"[[filtered]] x\"\n"
                           "    seeds: [13]\n")
    out = tmp_path / "out"
    monkeypatch.setenv("DIFFUSION_PROVIDER", "stability")
    assert main(["run", str(path), "--out", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["succeeded"] == 2 and doc["failed"] == 1
    assert "content filtered" in doc["failures"][0]["reason"]
    assert "CONTENT_FILTERED" in captured.err
    recs = records(out, "st")
    ok = [r for r in recs if r["status"] == "ok"]
    assert sorted(r["seed"] for r in ok) == [11, 12]
    assert not (out / "st" / "images" / "veiled").exists()  # a filtered image is never saved
    for rec in ok:
        image = out / "st" / "images" / rec["path"]
        with Image.open(image) as img:
            img.load()
            assert img.format == "WEBP" and img.size == (1216, 832)
        request = read_request(image)
        assert request["provider"] == "stability" and request["output_format"] == "webp"
    # the same manifest for Heroku is other jobs: webp is refused there first
    monkeypatch.delenv("DIFFUSION_PROVIDER")
    assert main(["validate", str(path)]) == 2
    capsys.readouterr()
    # a rerun for Stability sends nothing: the filtered job (seed 13) would be filtered
    # again; it stays failed (exit 1) and is sent again only when asked
    monkeypatch.setenv("DIFFUSION_PROVIDER", "stability")
    assert main(["run", str(path), "--out", str(out), "--json"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert (again["skipped"], again["held"], again["requests"]) == (2, 1, 0)
    assert main(["run", str(path), "--out", str(out), "--json", "--retry-failed"]) == 1
    asked = json.loads(capsys.readouterr().out)
    assert (asked["skipped"], asked["held"], asked["requests"]) == (2, 0, 1)


def test_the_same_manifest_on_heroku_then_stability_makes_each_its_own_images(
        tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "version: 1\nname: both\njobs:\n  - id: a\n    prompt: a fox\n"
                           "    seeds: [1, 2]\n")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--json", "--no-post"]) == 0
    first = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("DIFFUSION_PROVIDER", "stability")
    assert main(["run", str(path), "--out", str(out), "--json", "--no-post"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["succeeded"] == second["succeeded"] == 2 and second["skipped"] == 0
    keys = [r["key"] for r in records(out, "both")]
    assert len(set(keys)) == 4
    assert main(["status", str(path), "--out", str(out)]) == 0
    assert "2 done" in capsys.readouterr().out
    monkeypatch.delenv("DIFFUSION_PROVIDER")
    assert main(["status", str(path), "--out", str(out)]) == 0
    # Heroku's images were replaced at their paths by Stability's: pending again for Heroku
    assert "2 pending" in capsys.readouterr().out


async def _serve_run(tmp_path, plan_path, conns, providers, **kw):
    (plan,) = [load_plan(str(plan_path), providers=providers)]
    opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, backoff_base=0.01, **kw)
    return plan, await run_plans([plan], conns, opts, io.StringIO())


def test_the_lockout_is_waited_out_and_every_image_still_made_once(tmp_path):
    path = write(tmp_path, "version: 1\nname: lock\njobs:\n  - id: a\n    prompt: p\n"
                           "    seeds: {start: 1, count: 8}\n")

    async def scenario():
        # a lockout of one second, said in Retry-After (else the client assumes Stability's
        # documented 60 s)
        opts = ServerOptions(key=SKEY, workers=1, flat=True, stability_limit=3,
                             stability_window=1.0, stability_lockout=1.0,
                             stability_retry_after=True)
        async with running_server(opts) as srv:
            conn = connect.Connection("STABILITY", srv.url, SKEY, provider=STABILITY)
            plan, report = await _serve_run(tmp_path, path, [conn], (STABILITY,), rpm=0,
                                            concurrency=4, retries=8)
            return plan, report, srv.stats

    plan, report, stats = asyncio.run(scenario())
    assert stats.by_status[429] >= 1  # it was locked out...
    (rep,) = report.plans
    assert rep.succeeded == 8 and rep.failed == 0  # ...and waited the lockout out
    ok = [r for r in records(tmp_path / "out", "lock") if r["status"] == "ok"]
    assert len({r["path"] for r in ok}) == len(ok) == 8


def test_a_mixed_pool_shares_the_jobs_records_the_key_each_member_was_sent_and_reruns_nothing(
        tmp_path):
    path = write(tmp_path, "version: 1\nname: mixed\njobs:\n  - id: a\n    prompt: a fox\n"
                           "    seeds: {start: 1, count: 12}\n")
    keys = {"POOLH": HKEY, "POOLS": SKEY}
    providers = {"POOLH": HEROKU, "POOLS": STABILITY}

    async def scenario():
        async with running_server(ServerOptions(key=HKEY, workers=1, flat=True)) as h, \
                running_server(ServerOptions(key=SKEY, workers=1, flat=True)) as s:
            conns = [connect.Connection(p, srv.url, keys[p], provider=providers[p])
                     for p, srv in (("POOLH", h), ("POOLS", s))]
            plan, report = await _serve_run(tmp_path, path, conns, (HEROKU, STABILITY),
                                            rpm=6000, concurrency=4)
            sent = h.stats.requests + s.stats.requests
            _, again = await _serve_run(tmp_path, path, conns, (HEROKU, STABILITY),
                                        rpm=6000, concurrency=4)
            resent = h.stats.requests + s.stats.requests - sent
            backends = {config.backend_name(c.url) for c in conns if c.url}
            return plan, report, again, resent, backends

    plan, report, again, resent, backends = asyncio.run(scenario())
    assert report.plans[0].succeeded == 12 and resent == 0 and again.plans[0].skipped == 12
    recs = [r for r in records(tmp_path / "out", "mixed") if r["status"] == "ok"]
    by_path = {j.path: j for j in plan.jobs}
    made = Counter(r["member"] for r in recs)
    assert set(made) == {"POOLH", "POOLS"}, made
    assert len({r["path"] for r in recs}) == 12
    for rec in recs:
        sent = by_path[rec["path"]].for_provider(providers[rec["member"]])
        assert rec["key"] == sent.key  # each record names the key actually sent
        request = read_request(tmp_path / "out" / "mixed" / "images" / rec["path"])
        assert request == sent.request
        assert ("provider" in request) == (rec["member"] == "POOLS")
    states = job_states(plan.jobs, tmp_path / "out" / "mixed", backends)
    assert all(st.state == DONE for st in states)


def test_heroku_images_stay_done_when_a_stability_member_joins_the_pool(tmp_path):
    path = write(tmp_path, "version: 1\nname: grow\njobs:\n  - id: a\n    prompt: p\n"
                           "    seeds: [1, 2, 3]\n")

    async def scenario():
        async with running_server(ServerOptions(key=HKEY, workers=1, flat=True)) as h, \
                running_server(ServerOptions(key=SKEY, workers=1, flat=True)) as s:
            heroku = connect.Connection("POOLH", h.url, HKEY)
            await _serve_run(tmp_path, path, [heroku], (HEROKU,), rpm=6000)
            before = h.stats.requests + s.stats.requests
            stab = connect.Connection("POOLS", s.url, SKEY, provider=STABILITY)
            _, report = await _serve_run(tmp_path, path, [heroku, stab],
                                         (HEROKU, STABILITY), rpm=6000)
            return before, h.stats.requests + s.stats.requests, report

    before, after, report = asyncio.run(scenario())
    assert before == 3 and after == 3 and report.plans[0].skipped == 3


def test_an_image_to_image_run_sends_the_pick_and_makes_a_variation(tmp_path):
    (tmp_path / "pick.png").write_bytes(png((896, 1088)))
    path = write(tmp_path, "version: 1\nname: vary\njobs:\n  - id: more\n    prompt: a fox\n"
                           "    image: pick.png\n    strength: 0.3\n    seeds: [1, 2]\n")

    async def scenario():
        async with running_server(ServerOptions(key=SKEY, workers=1, flat=True,
                                                keep_bodies=True)) as s:
            conn = connect.Connection("S", s.url, SKEY, provider=STABILITY)
            _, report = await _serve_run(tmp_path, path, [conn], (STABILITY,), rpm=0)
            return report, [json.loads(b) for b in s.stats.bodies]

    report, bodies = asyncio.run(scenario())
    assert report.plans[0].succeeded == 2
    digest = hashlib.sha256((tmp_path / "pick.png").read_bytes()).hexdigest()
    assert all(b["image"] == digest and b["strength"] == "0.3" for b in bodies)
    for rec in records(tmp_path / "out", "vary"):
        with Image.open(tmp_path / "out" / "vary" / "images" / rec["path"]) as img:
            img.load()
            assert img.size == (896, 1088)  # 4:5, the input's shape


def test_the_embedded_server_refuses_what_stability_refuses(tmp_path):
    async def scenario():
        async with running_server(ServerOptions(workers=1, flat=True,
                                                script={3: "moderation"})) as s:
            url = s.url + apispec.STABILITY_ENDPOINT
            async with aiohttp.ClientSession() as session:
                answers = []
                for data in ({"prompt": "x"},  # urlencoded, not multipart
                             _form(prompt="x", seed="4294967295", aspect_ratio="4:3"),
                             _form(prompt="fine")):
                    async with session.post(url, data=data) as resp:
                        answers.append((resp.status, await resp.json()))
                return answers

    (urlenc, bad, flagged) = asyncio.run(scenario())
    assert urlenc[0] == 400 and "multipart/form-data" in urlenc[1]["errors"][0]
    assert bad[0] == 400 and bad[1]["name"] == "bad_request" and set(bad[1]) == {
        "id", "name", "errors"}
    assert any(e.startswith("seed:") for e in bad[1]["errors"])
    assert any(e.startswith("aspect_ratio:") for e in bad[1]["errors"])
    assert flagged[0] == 403 and flagged[1]["name"] == "content_moderation"


def _form(**fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, value)
    return form


@pytest.mark.slow
def test_serve_serves_both_providers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "imagebatch", "serve", "--port", "0",
                             "--workers", "1", "--flat"], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"serving on (\S+)", first).group(1)
        described = proc.stderr.readline()
        assert apispec.STABILITY_ENDPOINT in described and apispec.ENDPOINT in described

        async def both():
            async with aiohttp.ClientSession() as session:
                async with session.post(url + apispec.ENDPOINT, json={
                        "model": "stable-image-ultra", "prompt": "p", "seed": 3}) as resp:
                    heroku = (resp.status, (await resp.json())["data"][0]["b64_json"][:8])
                async with session.post(url + apispec.STABILITY_ENDPOINT,
                                        data=_form(prompt="p", seed="3"),
                                        headers={"Accept": "image/*"}) as resp:
                    stability = (resp.status, resp.headers["finish-reason"],
                                 resp.headers["seed"], (await resp.read())[:8])
            return heroku, stability

        heroku, stability = asyncio.run(both())
        assert heroku == (200, "iVBORw0K")
        assert stability == (200, "SUCCESS", "3", b"\x89PNG\r\n\x1a\n")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- "more like this" ----------------------------------------------------------------------

def test_the_variation_snippet_pasted_into_the_manifest_plans_a_variations_job(tmp_path):
    manifest = write(tmp_path, "version: 1\nname: pick\ndefaults:\n  negative_prompt: blur\n"
                               "jobs:\n  - id: fox\n    prompt: \"a fox: at {time}\"\n"
                               "    matrix:\n      time: [dawn]\n    seeds: [9]\n")
    (job,) = load_plan(str(manifest)).jobs
    image = tmp_path / "outputs" / "pick" / "images" / job.path
    image.parent.mkdir(parents=True)
    image.write_bytes(png((1024, 1024)))
    # the picked image is copied beside the manifest, and the snippet names the copy
    copy = input_path(job, manifest, "pick")
    assert copy == tmp_path / "inputs" / "pick" / "fox-dawn-9.png"
    assert save_input(image.read_bytes(), copy) is True
    assert save_input(image.read_bytes(), copy) is False  # already there: kept
    snippet = variation_snippet(job, copy, manifest)
    assert snippet.startswith(f"  # more like {job.path}")
    doc = variation_job(job, copy, manifest)
    assert doc["image"] == "inputs/pick/fox-dawn-9.png"
    assert doc["prompt"] == "a fox: at dawn" and doc["negative_prompt"] == "blur"
    # the outputs folder is not committed: the manifest must plan without it
    image.unlink()
    manifest.write_text(manifest.read_text() + snippet, encoding="utf-8")
    assert yaml.safe_load(manifest.read_text())["jobs"][1]["id"] == "fox-dawn-9-more"
    plan = load_plan(str(manifest), providers=(STABILITY,))
    more = [j for j in plan.jobs if j.id == "fox-dawn-9-more"]
    assert len(more) == 4
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert all(j.request["image"] == f"sha256:{digest}" and j.request["strength"] == 0.35
               for j in more)
    with pytest.raises(InputExists, match="holds another picture"):
        save_input(png((64, 64)), copy)  # never replaced: the manifest's jobs use it
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest


def test_more_like_this_writes_the_copy_and_no_key(tmp_path, monkeypatch):
    from imagebatch.assets.review import Review, more_like_this
    from imagebatch.storage import picks

    manifest = write(tmp_path, SIMPLE)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(manifest), "--out", str(out), "--no-post"]) == 0
    (plan,) = load_plans([str(manifest)], {}, "DIFFUSION")
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    review = Review(plan=plan, root=out / plan.name,
                    picks_file=picks.picks_path(str(manifest)), manifest=str(manifest))
    doc = more_like_this(review, "a/5.png")
    assert "image: inputs/g/a-5.png" in doc["snippet"]
    assert "strength: 0.35" in doc["snippet"]
    after = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p for p in after if p not in before] == [tmp_path / "inputs" / "g" / "a-5.png"]
    assert not leaks(SKEY, {"snippet": doc["snippet"], "input": doc["input"]})


def test_keys_never_show_in_a_stability_runs_output(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, SIMPLE)

    async def scenario():
        async with running_server(ServerOptions(key=SKEY, workers=1, flat=True,
                                                script={1: "422"})) as s:
            monkeypatch.setenv("STABILITY_URL", s.url)
            monkeypatch.setenv("STABILITY_PROVIDER", "stability")
            monkeypatch.setenv("STABILITY_API_KEY", SKEY)
            return await asyncio.to_thread(main, ["run", str(path), "--out",
                                                  str(tmp_path / "out"), "--env-prefix",
                                                  "STABILITY", "--rpm", "0"])

    code = asyncio.run(scenario())
    captured = capsys.readouterr()
    assert code == 1 and "invalid_language: English is the only supported" in captured.out
    # a paid API implied by STABILITY_API_KEY is said, with the way to stay offline
    assert re.search(r"note: STABILITY: sending to http://127\.0\.0\.1:\d+ with "
                     r"STABILITY_API_KEY .*--local", captured.err)
    assert not leaks(SKEY, {"out": captured.out, "err": captured.err}, under=tmp_path)
    with contextlib.suppress(FileNotFoundError):
        assert SKEY not in (tmp_path / "out" / "g" / "results.jsonl").read_text()


def test_a_mixed_pools_images_go_to_the_cache_under_the_key_sent_and_come_back_whole(tmp_path):
    import shutil

    from imagebatch.storage.cache import open_cache, restorable

    path = write(tmp_path, "version: 1\nname: mixc\njobs:\n  - id: a\n    prompt: a fox\n"
                           "    seeds: {start: 1, count: 8}\n")
    share = tmp_path / "share"
    share.mkdir()
    keys = {"POOLH": HKEY, "POOLS": SKEY}
    providers = {"POOLH": HEROKU, "POOLS": STABILITY}

    async def scenario():
        async with running_server(ServerOptions(key=HKEY, workers=1, flat=True)) as h, \
                running_server(ServerOptions(key=SKEY, workers=1, flat=True)) as s:
            conns = [connect.Connection(p, srv.url, keys[p], provider=providers[p])
                     for p, srv in (("POOLH", h), ("POOLS", s))]
            (plan,) = [load_plan(str(path), providers=(HEROKU, STABILITY))]
            opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=6000,
                              concurrency=4)
            first = await run_plans([plan], conns, opts, io.StringIO(),
                                    cache=open_cache(str(share), {}))
            made = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
                    for p in (tmp_path / "out").rglob("images/**/*.png")}
            sent = h.stats.requests + s.stats.requests
            backends = {config.backend_name(c.url) for c in conns if c.url}
            fills = await asyncio.to_thread(restorable, open_cache(str(share), {}), plan.jobs,
                                            backends)
            shutil.rmtree(tmp_path / "out")
            again = await run_plans([plan], conns, opts, io.StringIO(),
                                    cache=open_cache(str(share), {}))
            resent = h.stats.requests + s.stats.requests - sent
            back = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
                    for p in (tmp_path / "out").rglob("images/**/*.png")}
            return plan, first, again, resent, made, back, fills, backends

    plan, first, again, resent, made, back, fills, backends = asyncio.run(scenario())
    recs = [r for r in records(tmp_path / "out", "mixc") if r["status"] == "ok"]
    assert first.plans[0].uploaded == 8 and len(fills) == 8
    # both providers made some, each restored under the key it was sent, byte for byte
    assert {r["key"] for r in recs} - {j.key for j in plan.jobs}  # some are Stability keys
    assert again.plans[0].restored == 8 and resent == 0 and back == made
    assert all(st.state == DONE for st in job_states(plan.jobs, tmp_path / "out" / "mixc",
                                                    backends))


def test_stabilitys_webp_images_go_through_the_shared_cache(tmp_path, capsys, monkeypatch):
    import shutil

    path = write(tmp_path, "version: 1\nname: stc\ndefaults:\n  output_format: webp\njobs:\n"
                           "  - id: fox\n    prompt: a fox\n    seeds: [1, 2, 3]\n")
    share = tmp_path / "share"
    share.mkdir()
    out = tmp_path / "out"
    monkeypatch.setenv("DIFFUSION_PROVIDER", "stability")
    args = ["run", str(path), "--out", str(out), "--cache", str(share), "--json"]
    assert main(args) == 0
    made = {p.name: p.read_bytes() for p in (out / "stc" / "images").rglob("*.webp")}
    assert len(made) == 3 and json.loads(capsys.readouterr().out)["uploaded"] == 3
    shutil.rmtree(out)
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    # every image restored whole, no request sent
    assert (doc["restored"], doc["succeeded"], doc["requests"]) == (3, 0, 0)
    assert {p.name: p.read_bytes() for p in (out / "stc" / "images").rglob("*.webp")} == made

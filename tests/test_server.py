"""The embedded server over real sockets: validation, auth, images, faults, rate limit, load."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import re
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageChops, ImageStat
from runner_helpers import Clock

from imagebatch.errors import AuthError, PermanentApiError, RetryableApiError
from imagebatch.planning import apispec
from imagebatch.planning.plan import Job, canonical_json, job_key
from imagebatch.running.client import ApiClient
from imagebatch.running.retry import parse_duration
from imagebatch.service.render import render
from imagebatch.service.server import (
    FAULT_KINDS,
    MAX_REQUEST_BYTES,
    SERVICE_KEY,
    STATS_KEY,
    ServerOptions,
    ServerStats,
    make_app,
    running_server,
)

ENDPOINT = apispec.ENDPOINT


def body(**fields: Any) -> dict[str, Any]:
    """A valid request body, with `fields` added or overriding."""
    doc: dict[str, Any] = {"model": "stable-image-ultra", "prompt": "a lighthouse at dawn",
                           "seed": 7}
    doc.update(fields)
    return doc


async def post(session: aiohttp.ClientSession, url: str, doc: Any, *,
               raw: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else json.dumps(doc).encode()
    async with session.post(url + ENDPOINT, data=data, headers=headers or {}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def image_of(payload: bytes) -> tuple[bytes, Image.Image]:
    """The image bytes in a 200 body, decoded (fully) with Pillow."""
    doc = json.loads(payload)
    data = base64.b64decode(doc["data"][0]["b64_json"], validate=True)
    img = Image.open(io.BytesIO(data))
    img.load()
    return data, img


def assert_error(status: int, payload: bytes, want_status: int, want_type: str,
                 message_part: str = "") -> dict[str, Any]:
    assert status == want_status, payload[:300]
    doc = json.loads(payload)
    assert set(doc) == {"error"}
    err = doc["error"]
    assert set(err) == {"code", "message", "type"}
    assert err["code"] == want_status and isinstance(err["code"], int)
    assert err["type"] == want_type
    assert isinstance(err["message"], str) and err["message"]
    assert message_part in err["message"]
    return err


@pytest.fixture
async def server():
    async with running_server(ServerOptions(workers=2)) as srv:
        yield srv


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


# -- validation --------------------------------------------------------------------------

INVALID = [
    ({"prompt": "x"}, "'model' is required"),
    ({"model": 5, "prompt": "x"}, "'model' must be a string"),
    ({"model": ""}, "'prompt' is required"),
    (body(prompt=""), "'prompt' must not be empty"),
    (body(prompt="   "), "'prompt' must not be empty"),
    (body(prompt=12), "'prompt' must be a string"),
    (body(prompt=None), "'prompt' must be a string"),
    (body(prompt="p" * 10_001), "'prompt' is 10,001 characters"),
    (body(negative_prompt="n" * 10_001), "'negative_prompt' is 10,001 characters"),
    (body(negative_prompt=["a"]), "'negative_prompt' must be a string"),
    (body(aspect_ratio="4:3"), "'aspect_ratio' must be one of 16:9, 1:1"),
    (body(aspect_ratio=1), "'aspect_ratio' must be one of"),
    (body(size="1000x1000"), "'size' must be one of 1344x768"),
    (body(output_format="webp"), "'output_format' must be one of png, jpeg"),
    (body(output_format="jpg"), "'output_format' must be one of png, jpeg"),
    (body(response_format="png"), "'response_format' must be one of b64_json, base64, url"),
    (body(seed=-1), "'seed' must be an integer from 0 to 4294967295"),
    (body(seed=4_294_967_296), "'seed' must be an integer"),
    (body(seed=True), "'seed' must be an integer"),
    (body(seed=1.5), "'seed' must be an integer"),
    (body(seed=3.0), "'seed' must be an integer"),
    (body(seed="5"), "'seed' must be an integer"),
    (body(n=2), "unknown field 'n'"),
    (body(style_preset="photo"), "unknown field 'style_preset'"),
    (["not", "an", "object"], "must be a JSON object"),
    ("just a string", "must be a JSON object"),
]


@pytest.mark.parametrize(("doc", "message"), INVALID, ids=[m for _, m in INVALID])
async def test_invalid_bodies_are_400_with_the_reason(server, session, doc, message):
    status, _, payload = await post(session, server.url, doc)
    assert_error(status, payload, 400, "invalid_request_error", message)


async def test_every_problem_of_a_body_is_named_at_once(server, session):
    status, _, payload = await post(session, server.url, {"prompt": "", "seed": -2, "x": 1})
    err = assert_error(status, payload, 400, "invalid_request_error")
    for part in ("unknown field 'x'", "'model' is required", "'prompt' must not be empty",
                 "'seed' must be"):
        assert part in err["message"]


@pytest.mark.parametrize("raw", [b"", b"{", b"model=x&prompt=y", b"\xff\xfe{}", b"NaN]"])
async def test_bodies_that_are_not_json_are_400(server, session, raw):
    status, _, payload = await post(session, server.url, None, raw=raw)
    assert_error(status, payload, 400, "invalid_request_error", "not valid JSON")


@pytest.mark.parametrize("fields", [
    {"prompt": "p" * 10_000, "negative_prompt": "n" * 10_000},
    {"seed": 4_294_967_295}, {"seed": 1}, {"negative_prompt": ""},
    {"aspect_ratio": "21:9", "size": "1024x1024"},  # size wins
    {"response_format": "b64_json"}, {"response_format": "base64"},
    {"prompt": "ünïcödé 山 🦊"},
])
async def test_edge_values_are_accepted(server, session, fields):
    doc = body(**fields)
    status, _, payload = await post(session, server.url, doc)
    assert status == 200, payload[:300]
    _, img = image_of(payload)
    assert img.size == apispec.pixel_size(doc)


async def test_a_body_over_the_cap_is_413(server, session):
    doc = body(prompt="p" * (MAX_REQUEST_BYTES + 10))
    status, _, payload = await post(session, server.url, doc)
    assert_error(status, payload, 413, "invalid_request_error", "too large")


async def test_wrong_paths_and_methods_get_json_errors(server, session):
    async with session.post(server.url + "/v1/images/generate", json=body()) as resp:
        assert_error(resp.status, await resp.read(), 404, "not_found_error", ENDPOINT)
    async with session.get(server.url + "/") as resp:
        assert_error(resp.status, await resp.read(), 404, "not_found_error")
    async with session.get(server.url + ENDPOINT) as resp:
        assert_error(resp.status, await resp.read(), 405, "invalid_request_error", "GET")
        assert "POST" in resp.headers.get("Allow", "")
    async with session.get(server.url + "/v1/images/files/nothing.png") as resp:
        assert_error(resp.status, await resp.read(), 404, "not_found_error")


# -- auth --------------------------------------------------------------------------------

async def test_with_a_key_only_that_bearer_is_accepted(session):
    async with running_server(ServerOptions(key="inf-secret", flat=True)) as srv:
        for headers in ({}, {"Authorization": "Bearer inf-wrong"},
                        {"Authorization": "inf-secret"}, {"Authorization": "Basic inf-secret"}):
            status, _, payload = await post(session, srv.url, body(), headers=headers)
            err = assert_error(status, payload, 401, "authentication_error")
            assert "inf-secret" not in err["message"]
        for scheme in ("Bearer", "bearer"):
            status, _, payload = await post(session, srv.url, body(),
                                            headers={"Authorization": f"{scheme} inf-secret"})
            assert status == 200
        assert srv.stats.by_status[401] == 4 and srv.stats.by_status[200] == 2


async def test_without_a_key_any_bearer_or_none_is_accepted(server, session):
    for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "junk"}):
        status, _, _ = await post(session, server.url, body(), headers=headers)
        assert status == 200


# -- images ------------------------------------------------------------------------------

CASES = [(ratio, None, fmt) for ratio in apispec.ASPECT_RATIOS for fmt in apispec.OUTPUT_FORMATS]
CASES += [(None, size, fmt) for size in apispec.SIZES for fmt in apispec.OUTPUT_FORMATS]


@pytest.mark.parametrize(("ratio", "size", "fmt"), CASES)
async def test_every_size_and_format_decodes_exactly(server, session, ratio, size, fmt):
    fields: dict[str, Any] = {"output_format": fmt}
    if ratio:
        fields["aspect_ratio"] = ratio
    if size:
        fields["size"] = size
    doc = body(**fields)
    status, headers, payload = await post(session, server.url, doc)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    resp = json.loads(payload)
    assert isinstance(resp["created"], int) and resp["created"] > 1_700_000_000
    assert len(resp["data"]) == 1 and resp["data"][0]["revised_prompt"] == ""
    _, img = image_of(payload)
    want = size or apispec.ASPECT_SIZES[ratio]
    assert img.size == tuple(int(v) for v in want.split("x"))
    assert img.format == {"png": "PNG", "jpeg": "JPEG"}[fmt]
    assert img.mode == "RGB"


@pytest.mark.parametrize("fmt", apispec.OUTPUT_FORMATS)
async def test_flat_pictures_keep_size_format_and_determinism_without_render_processes(
        session, fmt):
    async with running_server(ServerOptions(flat=True)) as srv:
        made = {}
        for seed, ratio in ((7, "16:9"), (8, "16:9"), (7, "1:1"), (7, "16:9")):
            status, _, payload = await post(session, srv.url, body(
                seed=seed, aspect_ratio=ratio, output_format=fmt))
            assert status == 200
            data, img = image_of(payload)
            assert img.size == tuple(int(v) for v in apispec.ASPECT_SIZES[ratio].split("x"))
            assert img.format == {"png": "PNG", "jpeg": "JPEG"}[fmt]
            # a PNG is a one-colour palette (a few hundred bytes, made in 2 ms), a JPEG RGB
            assert img.mode == {"png": "P", "jpeg": "RGB"}[fmt]
            assert len(img.convert("RGB").getcolors(16) or ()) <= 4  # one colour (a JPEG blurs)
            if fmt == "png":
                assert len(data) < 2000
            made.setdefault((seed, ratio), set()).add(data)
        # the same request twice gives the same bytes; another seed or size other bytes
        assert [len(v) for v in made.values()] == [1, 1, 1]
        assert len(set().union(*made.values())) == 3
        stats = srv.app[STATS_KEY]
        assert stats.renders == 3
        # made in a thread: the render process pool never started a process
        pool = srv.app[SERVICE_KEY].pool
        assert not getattr(pool, "_processes", None)


async def test_defaults_are_square_png(server, session):
    status, _, payload = await post(session, server.url, {"model": "m", "prompt": "default"})
    assert status == 200
    _, img = image_of(payload)
    assert (img.size, img.format) == ((1024, 1024), "PNG")


async def test_same_body_same_bytes_even_across_servers(server, session):
    doc = body(seed=1234, negative_prompt="fog")
    first = image_of((await post(session, server.url, doc))[2])[0]
    again = image_of((await post(session, server.url, doc))[2])[0]
    assert first == again
    assert server.stats.renders == 1  # the retry came from the cache
    async with running_server(ServerOptions(workers=1)) as other:
        elsewhere = image_of((await post(session, other.url, doc))[2])[0]
        assert other.stats.renders == 1
    assert elsewhere == first


async def test_seed_prompt_and_negative_prompt_change_the_image(server, session):
    base = image_of((await post(session, server.url, body(seed=1)))[2])[0]
    for doc in (body(seed=2), body(seed=1, prompt="a lighthouse at dusk"),
                body(seed=1, negative_prompt="boats")):
        assert image_of((await post(session, server.url, doc))[2])[0] != base
    assert server.stats.renders == 4


async def test_seed_zero_picks_a_random_seed(server, session):
    a = image_of((await post(session, server.url, body(seed=0)))[2])[0]
    b = image_of((await post(session, server.url, body(seed=0)))[2])[0]
    assert a != b and server.stats.renders == 2


async def test_response_formats(server, session):
    doc = body(seed=99, output_format="jpeg")
    reference = image_of((await post(session, server.url, doc))[2])[0]
    for fmt in ("b64_json", "base64"):
        status, _, payload = await post(session, server.url, {**doc, "response_format": fmt})
        assert status == 200 and image_of(payload)[0] == reference
    status, _, payload = await post(session, server.url, {**doc, "response_format": "url"})
    assert status == 200
    item = json.loads(payload)["data"][0]
    assert "b64_json" not in item and item["revised_prompt"] == ""
    assert re.fullmatch(re.escape(server.url) + r"/v1/images/files/[0-9a-f]{32}\.jpg", item["url"])
    async with session.get(item["url"]) as resp:
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        data = await resp.read()
    assert data == reference
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)
    assert server.stats.renders == 1  # response_format does not change the picture


async def test_form_content_type_is_read_as_json(server, session):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, payload = await post(session, server.url, body(), headers=headers)
    assert status == 200
    assert image_of(payload)[1].size == (1024, 1024)


async def test_fifty_concurrent_requests_all_correct(server, session):
    docs = [body(seed=1000 + i, aspect_ratio=apispec.ASPECT_RATIOS[i % 9]) for i in range(50)]
    results = await asyncio.gather(*(post(session, server.url, d) for d in docs))
    seen = set()
    for doc, (status, _, payload) in zip(docs, results, strict=True):
        assert status == 200
        data, img = image_of(payload)
        assert img.size == apispec.pixel_size(doc)
        seen.add(hashlib.sha256(data).hexdigest())
    assert len(seen) == 50
    assert server.stats.requests == 50 and server.stats.renders == 50
    assert server.stats.by_status[200] == 50


async def test_concurrent_identical_bodies_share_one_render(server, session):
    results = await asyncio.gather(*(post(session, server.url, body(seed=5)) for _ in range(12)))
    assert {image_of(p)[0] for _, _, p in results}.__len__() == 1
    assert server.stats.renders == 1


async def test_make_app_exposes_stats():
    app = make_app(ServerOptions())
    assert isinstance(app[STATS_KEY], ServerStats) and app[STATS_KEY].requests == 0


# -- renderer ----------------------------------------------------------------------------

def _thumb(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((256, 256))
    return img


def test_render_is_pure_and_seeds_look_different_as_thumbnails():
    req = {"prompt": "a fox in the snow", "size": "1024x1024", "output_format": "png"}
    assert render(req, 42) == render(dict(req), 42)
    thumbs = [_thumb(render(req, seed)) for seed in (1, 2, 3, 4, 5)]
    for i in range(len(thumbs)):
        for j in range(i + 1, len(thumbs)):
            diff = ImageStat.Stat(ImageChops.difference(thumbs[i], thumbs[j])).mean
            # mean absolute difference per channel, 0..255: clearly different pictures
            assert sum(diff) / 3 > 12, (i, j, diff)


def test_render_is_a_picture_not_noise_or_a_flat_fill():
    img = Image.open(io.BytesIO(render({"prompt": "hills", "aspect_ratio": "16:9"}, 3)))
    assert img.size == (1344, 768)
    colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and 50 < len(colors) < 200_000  # shapes and text, not noise
    # A noise image barely compresses; this one is mostly smooth regions.
    assert len(render({"prompt": "hills", "aspect_ratio": "16:9"}, 3)) < 1344 * 768


def _bright_share(img: Image.Image, box: tuple[int, int, int, int]) -> float:
    region = img.crop(box).convert("L")
    hist = region.histogram()
    return sum(hist[225:]) / (region.width * region.height)


def test_render_draws_the_prompt_in_a_panel_and_the_tags():
    long = {"prompt": "words " * 3000, "size": "640x1536", "output_format": "jpeg"}
    short = {**long, "prompt": "."}
    img = Image.open(io.BytesIO(render(long, 4_294_967_295)))
    assert (img.format, img.size) == ("JPEG", (640, 1536))
    blank = Image.open(io.BytesIO(render(short, 4_294_967_295)))
    # Six lines of light text fill the panel at the bottom; a one-dot prompt does not.
    panel = (40, 1536 - 300, 600, 1536 - 60)
    assert _bright_share(img, panel) > 0.04
    assert _bright_share(img, panel) > 4 * _bright_share(blank, panel)
    # "seed N" (top left) and "WxH" (top right) are drawn in light text on a dark tag.
    for box in ((20, 20, 200, 60), (440, 20, 620, 60)):
        assert _bright_share(img, box) > 0.02


# -- faults ------------------------------------------------------------------------------

def only(kind: str, **extra: Any) -> ServerOptions:
    # flat pictures: a fault's shape (a status, a cut body, bad base64, another format or
    # size) is the same whatever the picture shows, and a flat one starts no render pool
    return ServerOptions(fail_rate=1.0, faults=(kind,), flat=True, **extra)


async def test_fault_429(session):
    async with running_server(only("429")) as srv:
        status, headers, payload = await post(session, srv.url, body())
        assert_error(status, payload, 429, "rate_limit_error")
        assert int(headers["Retry-After"]) >= 1
        assert srv.stats.faults["429"] == 1


@pytest.mark.parametrize("kind", ["500", "503"])
async def test_fault_5xx(session, kind):
    async with running_server(only(kind)) as srv:
        status, _, payload = await post(session, srv.url, body())
        assert_error(status, payload, int(kind), "server_error", "injected")
        assert srv.stats.faults[kind] == 1 and srv.stats.by_status[int(kind)] == 1


async def test_fault_reset(session):
    async with running_server(only("reset")) as srv:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, srv.url, body())
        assert srv.stats.faults["reset"] == 1 and srv.stats.requests == 1
        assert sum(srv.stats.by_status.values()) == 0


async def test_fault_truncate(session):
    async with running_server(only("truncate")) as srv:
        status, headers, payload = await post(session, srv.url, body())
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert payload.startswith(b'{"created":')
        with pytest.raises(ValueError):
            json.loads(payload)


async def test_fault_bad_base64(session):
    async with running_server(only("bad-base64")) as srv:
        status, _, payload = await post(session, srv.url, body())
        assert status == 200
        text = json.loads(payload)["data"][0]["b64_json"]
        with pytest.raises(binascii.Error):
            base64.b64decode(text, validate=True)


async def test_fault_not_image(session):
    async with running_server(only("not-image")) as srv:
        status, _, payload = await post(session, srv.url, body())
        assert status == 200
        data = base64.b64decode(json.loads(payload)["data"][0]["b64_json"], validate=True)
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(io.BytesIO(data))


@pytest.mark.parametrize(("asked", "got"), [("png", "JPEG"), ("jpeg", "PNG")])
async def test_fault_wrong_format(session, asked, got):
    async with running_server(only("wrong-format")) as srv:
        status, _, payload = await post(session, srv.url, body(output_format=asked))
        assert status == 200
        assert image_of(payload)[1].format == got


async def test_fault_wrong_size(session):
    async with running_server(only("wrong-size")) as srv:
        status, _, payload = await post(session, srv.url, body(aspect_ratio="16:9"))
        assert status == 200
        img = image_of(payload)[1]
        assert img.size != (1344, 768) and img.format == "PNG"


async def test_fault_html(session):
    async with running_server(only("html")) as srv:
        status, headers, payload = await post(session, srv.url, body())
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert payload.lstrip().lower().startswith(b"<!doctype html")


async def test_fault_stall_holds_then_answers(session):
    async with running_server(only("stall", stall_seconds=30.0)) as srv:
        timeout = aiohttp.ClientTimeout(total=0.5)
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(srv.url + ENDPOINT, json=body(), timeout=timeout) as resp:
                await resp.read()
        assert srv.stats.faults["stall"] == 1
    clock = Clock()  # a 30 s hold on the server's own clock: answered without waiting
    async with running_server(only("stall", stall_seconds=30.0, clock=clock,
                                   sleep=clock.sleep)) as srv:
        status, _, payload = await post(session, srv.url, body())
        assert status == 200 and image_of(payload)[1].size == (1024, 1024)
        assert clock.now >= 30.0


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_the_project_client_classifies_every_fault_as_retryable(session, kind):
    doc = body(seed=11)
    job = Job(index=0, id="j", key=job_key(doc), path="j/11.png", body=canonical_json(doc),
              seed=11, vars=(), label="j")
    async with running_server(only(kind, stall_seconds=30.0)) as srv:
        client = ApiClient(session, srv.url, "k", timeout=1.0 if kind == "stall" else 30.0)
        with pytest.raises(RetryableApiError):
            await client.generate(job)
    async with running_server(ServerOptions(flat=True)) as srv:
        image = await ApiClient(session, srv.url, "k").generate(job)
        assert (image.format, image.width, image.height) == ("png", 1024, 1024)


async def test_fault_attempts_bounds_the_faults_of_each_body(session):
    async with running_server(only("500", fault_attempts=2)) as srv:
        statuses = [(await post(session, srv.url, body(seed=1)))[0] for _ in range(3)]
        assert statuses == [500, 500, 200]
        other = [(await post(session, srv.url, body(seed=2)))[0] for _ in range(3)]
        assert other == [500, 500, 200]
        assert srv.stats.faults["500"] == 4


async def fault_pattern(session, options: ServerOptions, n: int = 40) -> list[str]:
    out = []
    async with running_server(options) as srv:
        for i in range(n):
            try:
                status, _headers, payload = await post(session, srv.url, body(seed=i + 1))
            except aiohttp.ClientConnectionError:
                out.append("reset")
                continue
            out.append(str(status) if status != 200 else payload[:1].decode(errors="replace"))
    return out


async def test_faults_are_deterministic_from_the_seed(session):
    faults = ("500", "503", "429", "reset", "html")
    # flat pictures: which requests fail is the point, not what the others show
    opts = ServerOptions(fail_rate=0.5, faults=faults, fault_seed=3, flat=True)
    first = await fault_pattern(session, opts)
    assert first == await fault_pattern(session, opts)
    other = await fault_pattern(session, ServerOptions(fail_rate=0.5, faults=faults,
                                                       fault_seed=4, flat=True))
    assert other != first
    faulted = sum(1 for x in first if x != "{")
    assert 8 <= faulted <= 32  # about half of 40 (fixed by the seed, so never flaky)


async def test_scripted_faults_hit_exactly_the_numbered_requests(session):
    opts = ServerOptions(script={2: "500", 4: "html"}, keep_bodies=True, flat=True)
    async with running_server(opts) as srv:
        statuses = []
        for seed in range(1, 6):
            status, headers, _payload = await post(session, srv.url, body(seed=seed))
            statuses.append((status, headers.get("Content-Type", "").split(";")[0]))
        assert statuses == [(200, "application/json"), (500, "application/json"),
                            (200, "application/json"), (200, "text/html"),
                            (200, "application/json")]
        assert srv.stats.faults == {"500": 1, "html": 1}
        assert [json.loads(b)["seed"] for b in srv.stats.bodies] == [1, 2, 3, 4, 5]


def test_scripted_faults_are_checked():
    with pytest.raises(ValueError, match="unknown fault kind"):
        ServerOptions(script={1: "teapot"})
    with pytest.raises(ValueError, match="numbered from 1"):
        ServerOptions(script={0: "500"})


async def test_fail_trigger_in_the_prompt(server, session):
    cases = {400: "invalid_request_error", 403: "authorization_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
             503: "server_error"}
    for code, kind in cases.items():
        status, headers, payload = await post(
            session, server.url, body(prompt=f"a cat [[fail:{code}]] on a mat"))
        assert_error(status, payload, code, kind)
        if code == 429:
            assert int(headers["Retry-After"]) >= 1
    status, _, payload = await post(session, server.url, body(prompt="[[fail:200]] is no error"))
    assert status == 200
    assert server.stats.faults["fail:403"] == 1 and server.stats.renders == 1


async def test_fail_403_is_permanent_for_the_project_client(server, session):
    doc = body(prompt="[[fail:403]]")
    job = Job(index=0, id="j", key=job_key(doc), path="j/7.png", body=canonical_json(doc),
              seed=7, vars=(), label="j")
    with pytest.raises(PermanentApiError) as info:
        await ApiClient(session, server.url, "k").generate(job)
    assert not isinstance(info.value, AuthError) and "access" in info.value.message


@pytest.mark.parametrize("bad", [
    {"faults": ("boom",)}, {"fail_rate": 1.5}, {"rpm": 0}, {"window": 0},
    {"latency_ms": -1}, {"workers": 0}, {"fault_attempts": -1},
    {"fail_rate": 0.5, "faults": ()},
])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        ServerOptions(**bad)


# -- rate limit --------------------------------------------------------------------------

async def test_rate_limit_headers_and_429(session):
    async with running_server(ServerOptions(rpm=3, window=60.0, flat=True)) as srv:
        remaining = []
        for i in range(3):
            status, headers, _ = await post(session, srv.url, body(seed=i + 1))
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(headers["x-ratelimit-remaining-requests"])
            reset = parse_duration(headers["x-ratelimit-reset-requests"])
            assert reset is not None and 0 < reset <= 60
        assert remaining == ["2", "1", "0"]
        for _ in range(2):
            status, headers, payload = await post(session, srv.url, body(seed=9))
            assert_error(status, payload, 429, "rate_limit_error")
            assert headers["x-ratelimit-remaining-requests"] == "0"
            retry = int(headers["Retry-After"])
            reset = parse_duration(headers["x-ratelimit-reset-requests"])
            assert reset is not None and 1 <= retry <= 60 and retry >= reset
        assert srv.stats.by_status == {200: 3, 429: 2}


async def test_rate_limit_without_retry_after(session):
    async with running_server(ServerOptions(rpm=1, window=60.0, retry_after=False,
                                            flat=True)) as srv:
        assert (await post(session, srv.url, body()))[0] == 200
        status, headers, _ = await post(session, srv.url, body())
        assert status == 429 and "Retry-After" not in headers
        assert headers["x-ratelimit-reset-requests"].endswith("s")


async def test_the_window_slides_and_429s_do_not_count(session):
    clock = Clock()  # the server's time: it passes only when the test moves it
    options = ServerOptions(rpm=1, window=1.5, flat=True, clock=clock, sleep=clock.sleep)
    async with running_server(options) as srv:
        started = clock.now
        assert (await post(session, srv.url, body()))[0] == 200
        # Keep being refused for a while: were refusals counted, they would fill the window.
        refusals = []
        while clock.now - started < 0.3:
            status, headers, _ = await post(session, srv.url, body())
            assert status == 429
            refusals.append(parse_duration(headers["x-ratelimit-reset-requests"]))
            clock.now += 0.05
        assert refusals and all(r is not None and 0 < r <= 1.5 for r in refusals)
        assert refusals == sorted(refusals, reverse=True)  # the reset counts down
        clock.now += refusals[-1] + 0.05  # the admitted request has left the window
        status, headers, _ = await post(session, srv.url, body())
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
        assert srv.stats.by_status == {200: 2, 429: len(refusals)}


async def test_latency_is_added(session):
    clock = Clock()
    options = ServerOptions(latency_ms=150, flat=True, clock=clock, sleep=clock.sleep)
    async with running_server(options) as srv:
        started = clock.now
        status, _, _ = await post(session, srv.url, body())
        assert status == 200
        assert clock.now - started >= 0.15  # waited through the server's sleep

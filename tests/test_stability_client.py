"""The Stability provider's client: the request checked part by part against Stability's
documented shape on a real aiohttp server, its answers (image bytes with headers, JSON,
CONTENT_FILTERED on a 200, the seed header), and its failures (error bodies, the 429
lockout, 5xx and resets) against a scripted HTTPS service on 127.0.0.1 (http_helpers)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from http_helpers import service
from PIL import Image
from runner_helpers import Clock

from imagebatch.errors import AuthError, PermanentApiError, RetryableApiError
from imagebatch.planning import apispec
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import Job
from imagebatch.providers.heroku import HEROKU
from imagebatch.providers.stability import MAX_RPM, STABILITY
from imagebatch.running import images
from imagebatch.running.client import ApiClient
from imagebatch.running.retry import Pacer

KEY = "sk-STAB-0123456789abcdef-test"
BASE = "https://api.stability.example.test"
URL = BASE + apispec.STABILITY_ENDPOINT


def encoded(fmt: str = "png", size: tuple[int, int] = (1344, 768),
            color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buf.getvalue()


def plan_jobs(tmp_path: Path, text: str, providers=(STABILITY,)) -> tuple[Job, ...]:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text, encoding="utf-8")
    return load_plan(str(manifest), providers=providers).jobs


TEXT_JOB = ("version: 1\nname: st\njobs:\n  - id: fox\n    prompt: \"a red fox, ünïcode\"\n"
            "    negative_prompt: blurry\n    aspect_ratio: \"16:9\"\n    output_format: webp\n"
            "    seeds: [42]\n")


class Capture:
    """A real aiohttp server that records each request (headers, multipart parts) and answers
    with what `answer` returns."""

    def __init__(self, answer: Callable[[], web.StreamResponse]) -> None:
        self.answer = answer
        self.seen: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            parts.append({"name": part.name, "filename": part.filename,
                          "type": part.headers.get("Content-Type"),
                          "data": bytes(await part.read(decode=False))})
        self.seen.append({"method": request.method, "path": request.path,
                          "headers": dict(request.headers), "type": request.content_type,
                          "parts": parts})
        return self.answer()


@contextlib.asynccontextmanager
async def capture(answer: Callable[[], web.StreamResponse]) -> AsyncIterator[tuple[Capture, str]]:
    cap = Capture(answer)
    app = web.Application()
    app.router.add_post(apispec.STABILITY_ENDPOINT, cap.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield cap, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def image_answer(data: bytes, fmt: str = "webp", reason: str = "SUCCESS", seed: str = "42"):
    return lambda: web.Response(body=data, content_type=f"image/{fmt}",
                                headers={"finish-reason": reason, "seed": seed})


async def generate(url: str, job: Job, **kw):
    async with aiohttp.ClientSession() as session:
        client = ApiClient(session, url, KEY, provider=STABILITY,
                           key_variable="STABILITY_API_KEY", **kw)
        return await client.generate(job)


# -- the request, as Stability documents it ----------------------------------------------

async def test_a_text_to_image_request_is_multipart_with_each_field_its_own_part(tmp_path):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    data = encoded("webp")
    async with capture(image_answer(data)) as (cap, url):
        image = await generate(url, job)
    (req,) = cap.seen
    assert req["method"] == "POST" and req["path"] == "/v2beta/stable-image/generate/ultra"
    assert req["type"] == "multipart/form-data"  # even with no file part
    assert "boundary=" in req["headers"]["Content-Type"]
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["Accept"] == "image/*"
    fields = {p["name"]: p["data"].decode("utf-8") for p in req["parts"]}
    # exactly the documented fields: no model (the endpoint is the model), no provider
    assert fields == {"prompt": "a red fox, ünïcode", "negative_prompt": "blurry",
                      "aspect_ratio": "16:9", "output_format": "webp", "seed": "42"}
    assert all(p["filename"] is None for p in req["parts"])
    assert image.data == data and image.format == "webp" and image.seed == 42
    assert (image.width, image.height) == (1344, 768)


async def test_an_image_to_image_request_sends_the_file_and_its_strength(tmp_path):
    source = tmp_path / "pick.png"
    source.write_bytes(encoded("png", (640, 512), (200, 10, 10)))
    (job,) = plan_jobs(tmp_path, "version: 1\nname: st\njobs:\n  - id: more\n    prompt: p\n"
                                 "    image: pick.png\n    strength: 0.35\n    seeds: [7]\n")
    answer = encoded("png", (1088, 896))  # its own shape: an answer keeps the input's
    async with capture(image_answer(answer, "png", seed="7")) as (cap, url):
        image = await generate(url, job)
    parts = {p["name"]: p for p in cap.seen[0]["parts"]}
    assert set(parts) == {"prompt", "image", "strength", "seed"}
    assert parts["image"]["data"] == source.read_bytes()
    assert parts["image"]["filename"] == "pick.png" and parts["image"]["type"] == "image/png"
    assert parts["strength"]["data"] == b"0.35"
    assert image.format == "png" and image.seed == 7


async def test_an_input_image_changed_since_planning_is_refused_before_sending(tmp_path):
    source = tmp_path / "pick.png"
    source.write_bytes(encoded("png", (640, 512)))
    (job,) = plan_jobs(tmp_path, "version: 1\nname: st\njobs:\n  - id: more\n    prompt: p\n"
                                 "    image: pick.png\n    strength: 0.5\n    seeds: [7]\n")
    source.write_bytes(encoded("png", (640, 512), (0, 255, 0)))
    async with capture(image_answer(encoded("png"), "png")) as (cap, url):
        with pytest.raises(PermanentApiError, match="changed since the plan was made"):
            await generate(url, job)
    assert cap.seen == []


async def test_a_json_answer_is_read_too(tmp_path):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    data = encoded("webp")
    doc = {"image": base64.b64encode(data).decode(), "finish_reason": "SUCCESS", "seed": 42}
    async with capture(lambda: web.json_response(doc)) as (cap, url):
        image = await generate(url, job, accept="application/json")
    assert cap.seen[0]["headers"]["Accept"] == "application/json"
    assert image.data == data and image.seed == 42


@pytest.mark.parametrize("json_answer", [False, True])
async def test_content_filtered_on_a_200_fails_the_job_for_good(tmp_path, json_answer):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    blurred = encoded("webp", color=(128, 128, 128))
    if json_answer:
        doc = {"image": base64.b64encode(blurred).decode(), "finish_reason": "CONTENT_FILTERED",
               "seed": 42}
        answer = lambda: web.json_response(doc)  # noqa: E731
    else:
        answer = image_answer(blurred, reason="CONTENT_FILTERED")
    async with capture(answer) as (cap, url):
        with pytest.raises(PermanentApiError) as info:
            await generate(url, job)
    assert info.value.kind == "content_filtered" and info.value.status == 200
    assert "CONTENT_FILTERED" in info.value.message and len(cap.seen) == 1


# -- failures, at unit level ---------------------------------------------------------------

async def unit(setup, job: Job):
    seen = []
    async with service() as m:
        setup(m)
        async with m.session() as session:
            client = ApiClient(session, BASE, KEY, provider=STABILITY,
                               key_variable="STABILITY_API_KEY")
            try:
                result = await client.generate(job, lambda h, s: seen.append((s, h)))
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                result = exc
        # each call sent one request, and the service received it
        assert [(r.method, r.url) for r in m.requests] == [("POST", URL)]
    return result, seen


@pytest.mark.parametrize("status", [400, 403, 413, 422])
async def test_error_bodies_give_their_name_and_errors(tmp_path, status):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    body = {"id": "a1b2", "name": "bad_request" if status != 403 else "content_moderation",
            "errors": ["aspect_ratio: must be one of ...", "seed: too large"]}
    result, _ = await unit(lambda m: m.post(URL, status=status, payload=body), job)
    assert isinstance(result, PermanentApiError) and result.status == status
    assert result.message == f"{body['name']}: aspect_ratio: must be one of ...; seed: too large"
    # Stability's 403 is its moderation, not a refused key: a pool keeps the member
    assert (result.kind == "moderation") == (status == 403)


async def test_a_refused_key_names_the_variable_it_came_from(tmp_path):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    result, _ = await unit(lambda m: m.post(URL, status=401, payload={
        "id": "x", "name": "unauthorized", "errors": ["missing authorization header"]}), job)
    assert isinstance(result, AuthError) and "STABILITY_API_KEY" in result.message
    assert KEY not in result.message


async def test_a_429_is_a_60_second_cool_down_when_no_retry_after_is_given(tmp_path):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    result, seen = await unit(lambda m: m.post(URL, status=429, payload={
        "id": "x", "name": "rate_limit_exceeded", "errors": ["too many requests"]}), job)
    assert isinstance(result, RetryableApiError) and result.retry_after == 60.0
    (status, headers), = seen
    clock = Clock()
    pacer = Pacer(600, clock=clock, sleep=clock.sleep)
    pacer.observe(headers, status)
    assert status == 429 and pacer.ready_at() == pytest.approx(60.0)


@pytest.mark.parametrize("setup", [
    lambda m: m.post(URL, status=500, payload={"id": "x", "name": "internal_error",
                                               "errors": ["boom"]}),
    lambda m: m.post(URL, status=503, body="<html>unavailable</html>"),
    lambda m: m.post(URL, action="disconnect"),
])
async def test_5xx_and_resets_are_retried(tmp_path, setup):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    result, _ = await unit(setup, job)
    assert isinstance(result, RetryableApiError)


async def test_other_finish_reasons_and_bytes_that_are_not_the_image_are_retried(tmp_path):
    (job,) = plan_jobs(tmp_path, TEXT_JOB)
    result, _ = await unit(lambda m: m.post(URL, status=200, body=encoded("webp"),
                                            headers={"finish-reason": "ERROR",
                                                     "Content-Type": "image/webp"}), job)
    assert isinstance(result, RetryableApiError) and result.kind == "finish_reason"
    result, _ = await unit(lambda m: m.post(URL, status=200, body=encoded("png"),
                                            headers={"finish-reason": "SUCCESS",
                                                     "Content-Type": "image/png"}), job)
    assert isinstance(result, RetryableApiError) and result.kind == "wrong_format"


def test_webp_is_accepted_and_a_stability_image_is_checked_by_its_shape():
    request = {"provider": "stability", "prompt": "p", "aspect_ratio": "16:9",
               "output_format": "webp"}

    def check_image(data, request, provider=STABILITY):
        return images.check_image(data, request, provider)

    assert check_image(encoded("webp", (1344, 768)), request).format == "webp"
    assert check_image(encoded("webp", (1360, 765)), request).width == 1360  # about 16:9
    assert check_image(encoded("webp", (1360, 765)), request).flag is None
    # another shape at about one megapixel: the provider's choice, which a retry would only
    # buy again; kept, and flagged
    square = check_image(encoded("webp", (1024, 1024)), request)
    assert (square.width, square.height) == (1024, 1024)
    assert square.flag == "image is 1024x1024, not the 16:9 asked for"
    # far from a megapixel (a thumbnail, a placeholder): a body that lies, retried
    with pytest.raises(RetryableApiError, match="not the 16:9"):
        check_image(encoded("webp", (512, 512)), request)
    truncated = encoded("webp", (1344, 768))
    with pytest.raises(RetryableApiError):
        check_image(truncated[: len(truncated) // 2], request)
    # Heroku's sizes are exact: any other is flagged (kept when about a megapixel)
    heroku = {"prompt": "p", "aspect_ratio": "16:9"}
    assert check_image(encoded("png", (1360, 765)), heroku, HEROKU).flag == \
        "image is 1360x765, asked for 1344x768"
    with pytest.raises(RetryableApiError, match="asked for 1344x768"):
        check_image(encoded("png", (672, 384)), heroku, HEROKU)


def test_stability_is_paced_under_150_requests_in_any_10_seconds():
    assert STABILITY.pace(None, 20, True, False) == (600.0, False)
    assert STABILITY.pace(5000, 20, True, False) == (MAX_RPM, False)
    assert HEROKU.pace(None, 20, True, False) == (20, True)
    for rpm in (None, 5000.0):
        pace, auto = STABILITY.pace(rpm, None, False, False)
        clock = Clock()
        pacer = Pacer(pace, auto_rpm=auto, clock=clock, sleep=clock.sleep)
        starts = []

        async def go(pacer=pacer, clock=clock, starts=starts) -> None:
            for _ in range(600):
                await pacer.acquire()
                starts.append(clock.now)

        asyncio.run(go())
        most = max(sum(1 for t in starts if s <= t < s + 10.0) for s in starts)
        assert most < apispec.STABILITY_LIMIT, (rpm, most)


def test_the_key_never_shows_in_the_clients_repr():
    async def make() -> str:
        async with aiohttp.ClientSession() as session:
            return repr(ApiClient(session, BASE, KEY, provider=STABILITY))
    shown = asyncio.run(make())
    assert KEY not in shown and apispec.STABILITY_ENDPOINT in shown
    assert hashlib.sha256(KEY.encode()).hexdigest() not in shown

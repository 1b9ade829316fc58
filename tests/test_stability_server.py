"""The embedded server's Stability path as Stability's reference has it, and the client
against it: the headers the client names itself with, unknown form parts ignored, JSON
answers' content type, `x-request-id`, 429s without `Retry-After` (and the client's 60 s
assumption), error names, Ultra's input-image rules and its 10 MiB request limit."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict
from PIL import Image
from runner_helpers import Clock

from imagebatch import version
from imagebatch.errors import PermanentApiError, RetryableApiError
from imagebatch.planning import apispec
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import Job, canonical_json, job_key
from imagebatch.providers.stability import STABILITY
from imagebatch.running.client import ApiClient
from imagebatch.running.runner import Runner, RunSettings
from imagebatch.service.server import ServerOptions, running_server

KEY = "sk-STAB-server-0123456789-test"


def encoded(fmt: str = "png", size: tuple[int, int] = (640, 512),
            color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buf.getvalue()


def plan_jobs(tmp_path: Path, text: str) -> tuple[Job, ...]:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text, encoding="utf-8")
    return load_plan(str(manifest), providers=(STABILITY,)).jobs


def form(**fields: str | bytes) -> aiohttp.FormData:
    """A multipart body as any client would make it: text fields, and bytes as file parts."""
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename=f"{name}.bin",
                           content_type="application/octet-stream")
        else:
            data.add_field(name, value)
    return data


async def post(url: str, data: aiohttp.FormData | bytes, accept: str = "image/*",
               headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            url + apispec.STABILITY_ENDPOINT, data=data,
            headers={"Authorization": f"Bearer {KEY}", "Accept": accept, **(headers or {})},
    ) as resp:
        # case-insensitive, as HTTP headers are: aiohttp 3.14 spells a known name its own
        # way ("X-Request-ID"), whatever the server sent
        return resp.status, CIMultiDict(resp.headers), await resp.read()


# -- item 10: the client names itself ---------------------------------------------------------

def test_every_stability_request_names_imagebatch_and_its_version(tmp_path):
    (tmp_path / "pick.png").write_bytes(encoded())
    jobs = plan_jobs(tmp_path, "version: 1\nname: h\njobs:\n  - id: text\n    prompt: a fox\n"
                               "    seeds: [1]\n  - id: more\n    prompt: p\n"
                               "    image: pick.png\n    strength: 0.5\n    seeds: [2]\n")

    async def scenario():
        # the first request is answered 500: the one sent again is a Stability request too
        options = ServerOptions(flat=True, key=KEY, keep_bodies=True, script={1: "500"})
        async with running_server(options) as srv, aiohttp.ClientSession() as session:
            client = ApiClient(session, srv.url, KEY, provider=STABILITY)
            with pytest.raises(RetryableApiError):
                await client.generate(jobs[0])
            for job in jobs:
                await client.generate(job)
            return srv.stats

    stats = asyncio.run(scenario())
    assert stats.requests == 3 and stats.by_status == {500: 1, 200: 2}
    for headers in stats.headers:
        assert headers["stability-client-id"] == "imagebatch"
        assert headers["stability-client-version"] == version() != ""
        assert not any(name.lower() == "authorization" for name in headers)  # never kept
        assert KEY not in json.dumps(headers)



# -- item 9: the server answers as Stability does -------------------------------------------

def test_unknown_parts_are_ignored_as_stability_ignores_them():
    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY, keep_bodies=True)) as srv:
            # Stability's own Python sample and litellm force multipart with an empty file
            # part named `none`; `mode` belongs to another endpoint
            answer = await post(srv.url, form(prompt="a fox", seed="3", none=b"", mode="x"))
            return answer, srv.stats.bodies

    (status, headers, body), bodies = asyncio.run(scenario())
    assert status == 200, body
    assert headers["finish-reason"] == "SUCCESS" and headers["seed"] == "3"
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        assert (img.format, img.size) == ("PNG", (1024, 1024))
    assert json.loads(bodies[0]) == {"prompt": "a fox", "seed": "3"}  # what it knows, only


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_answers_carry_a_request_id_and_json_names_the_image_type(fmt):
    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY)) as srv:
            data = await post(srv.url, form(prompt="p", seed="9", output_format=fmt),
                              accept="application/json")
            raw = await post(srv.url, form(prompt="p", seed="9", output_format=fmt))
            bad = await post(srv.url, form(prompt="p", seed="-1"))
            return data, raw, bad

    (status, headers, body), raw, bad = asyncio.run(scenario())
    assert status == 200 and headers["Content-Type"] == f"application/json; type=image/{fmt}"
    doc = json.loads(body)
    assert set(doc) == {"image", "finish_reason", "seed"} and doc["seed"] == 9
    assert len(headers["x-request-id"]) >= 16
    assert raw[0] == 200 and raw[1]["Content-Type"] == f"image/{fmt}"
    assert len(raw[1]["x-request-id"]) >= 16 and raw[1]["x-request-id"] != headers["x-request-id"]
    assert bad[0] == 400 and bad[1]["x-request-id"] == json.loads(bad[2])["id"]


def test_a_429_has_no_retry_after_unless_asked_for():
    async def scenario(**kw):
        options = ServerOptions(flat=True, key=KEY, script={1: "lockout"}, **kw)
        async with running_server(options) as srv:
            return await post(srv.url, form(prompt="p"))

    status, headers, body = asyncio.run(scenario())
    assert status == 429 and "Retry-After" not in headers
    doc = json.loads(body)
    assert doc["name"] == "rate_limit_exceeded" and "150 requests" in doc["errors"][0]
    status, headers, _ = asyncio.run(scenario(stability_retry_after=True))
    assert status == 429 and headers["Retry-After"] == "60"


@pytest.mark.parametrize(("prompt", "key", "status", "name"), [
    ("p", "sk-wrong", 401, "unauthorized"),
    ("p [[fail:400]]", KEY, 400, "bad_request"),
    ("p [[fail:402]]", KEY, 402, "payment_required"),
    ("p [[fail:403]]", KEY, 403, "content_moderation"),
    ("p [[fail:413]]", KEY, 413, "payload_too_large"),
    ("p [[fail:422]]", KEY, 422, "invalid_language"),
    ("p [[fail:429]]", KEY, 429, "rate_limit_exceeded"),
    ("p [[fail:500]]", KEY, 500, "internal_error"),
])
def test_errors_are_named_as_stabilitys_reference_names_them(prompt, key, status, name):
    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY)) as srv:
            return await post(srv.url, form(prompt=prompt),
                              headers={"Authorization": f"Bearer {key}"})

    got, headers, body = asyncio.run(scenario())
    doc = json.loads(body)
    assert (got, doc["name"]) == (status, name) and set(doc) == {"id", "name", "errors"}
    assert headers["Content-Type"].startswith("application/json")


def test_the_422_fault_is_stabilitys_invalid_language():
    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY, script={1: "422"})) as srv:
            return await post(srv.url, form(prompt="p"))

    status, _, body = asyncio.run(scenario())
    doc = json.loads(body)
    assert status == 422 and doc["name"] == "invalid_language"
    assert "English is the only supported language" in doc["errors"][0]


class _Store:
    """Keeps what the runner saves, in memory."""

    def __init__(self) -> None:
        self.saved: dict[str, bytes] = {}
        self.failed: dict[str, str] = {}

    def cannot_write(self, job: Job) -> None:
        return None

    def save(self, job: Job, data: bytes, **_: object) -> None:
        self.saved[job.path] = data

    def fail(self, job: Job, error: str, **_: object) -> None:
        self.failed[job.path] = error


@pytest.mark.parametrize("accept", ["image/*", "application/json"])
def test_the_client_reads_the_answers_and_waits_60_s_after_a_bare_429(tmp_path, accept):
    (job,) = plan_jobs(tmp_path, "version: 1\nname: w\njobs:\n  - id: a\n    prompt: a fox\n"
                                 "    aspect_ratio: \"3:2\"\n    output_format: webp\n"
                                 "    seeds: [4]\n")
    clock, store = Clock(), _Store()

    async def scenario():
        # the first request starts a lockout (of no real time: the test's clock is its own)
        options = ServerOptions(flat=True, key=KEY, script={1: "lockout"},
                                stability_lockout=0.0)
        async with running_server(options) as srv, aiohttp.ClientSession() as session:
            client = ApiClient(session, srv.url, KEY, provider=STABILITY, accept=accept)
            runner = Runner(client, RunSettings(concurrency=1, retries=3), sleep=clock.sleep,
                            clock=clock, rng=lambda: 0.0)
            state = await runner.run([(store, job)])
            return state, srv.stats

    state, stats = asyncio.run(scenario())
    assert stats.requests == 2 and stats.by_status == {429: 1, 200: 1}
    assert state.ok == 1 and store.failed == {}
    assert 60.0 <= clock.now < 61.0  # Stability's documented lockout, assumed: no sooner
    with Image.open(io.BytesIO(store.saved[job.path])) as img:
        img.load()
        assert (img.format, img.size) == ("WEBP", (1216, 832))


# -- item 6: Ultra's input images and its 10 MiB ------------------------------------------------

def test_the_server_takes_ultras_input_images_by_ultras_rules():
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 60)).save(photo, format="JPEG", quality=90)

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY)) as srv:
            taken = await post(srv.url, form(prompt="p", strength="0.4", seed="2",
                                             image=photo.getvalue()))
            long = await post(srv.url, form(prompt="p", strength="0.4",
                                            image=encoded(size=(16385, 64))))
            return taken, long

    (status, _, body), long = asyncio.run(scenario())
    assert status == 200, body  # a 12 MP photo: Ultra has no pixel cap
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        assert img.size == (1088, 896)  # 5:4, the nearest of the nine to the photo's 4:3
    assert long[0] == 400
    assert json.loads(long[2])["errors"] == [
        "image: is 16385x64: each side needs 64 to 16,384 pixels"]


def _multipart(boundary: str, image: bytes) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\np\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"strength\"\r\n\r\n0.5\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + image + \
        f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_10_mib_is_payload_too_large(chunked):
    limit = 10 * 1024 * 1024
    boundary = "b0und4ry"
    small = _multipart(boundary, encoded())
    body = _multipart(boundary, encoded() + bytes(limit - len(small) + 1))  # one byte over
    assert len(body) == limit + 1

    async def pieces():
        for at in range(0, len(body), 1024 * 1024):
            yield body[at:at + 1024 * 1024]

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY)) as srv:
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            answer = await post(srv.url, pieces() if chunked else body, headers=headers)
            return answer, srv.stats

    (status, headers, raw), stats = asyncio.run(scenario())
    doc = json.loads(raw)
    assert status == 413 and doc["name"] == "payload_too_large" and set(doc) == {
        "id", "name", "errors"}
    assert doc["errors"] == ["payloads cannot be larger than 10MiB in size"]
    assert stats.requests == 1 and stats.renders == 0


@pytest.mark.parametrize(("short_by", "said"), [
    (-1, "the input image"),  # the file alone is over
    (100, "the request is 10,48"),  # the file fits, the request with it does not
])
def test_a_request_over_10_mib_is_never_sent_even_unplanned(tmp_path, short_by, said):
    (tmp_path / "small.png").write_bytes(encoded())
    (job,) = plan_jobs(tmp_path, "version: 1\nname: u\njobs:\n  - id: a\n    prompt: p\n"
                                 "    image: small.png\n    strength: 0.5\n    seeds: [1]\n")
    # a job made by hand, not through planning (which refuses it first)
    big = tmp_path / "big.png"
    big.write_bytes(encoded() + bytes(10 * 1024 * 1024 - short_by - len(encoded())))
    request = {**job.request, "image": "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()}
    job = dataclasses.replace(job, body=canonical_json(request), key=job_key(request),
                              image=str(big))

    async def scenario():
        async with running_server(ServerOptions(flat=True, key=KEY)) as srv, \
                aiohttp.ClientSession() as session:
            client = ApiClient(session, srv.url, KEY, provider=STABILITY)
            with pytest.raises(PermanentApiError) as info:
                await client.generate(job)
            return info.value, srv.stats.requests

    error, received = asyncio.run(scenario())
    assert received == 0 and error.kind == "too_large" and error.requests == 0
    assert error.message.startswith(said), error.message
    assert "over the 10,485,760 (10 MiB) a Stability request may be" in error.message

"""The embedded server's Bedrock path, driven by a plain aiohttp client as AWS's would be:
answers decoded, filtered images, each AWS error with its x-amzn-ErrorType, throttling on
the server's injected clock; and the service package's shape (one fault pipeline that
imports no fake, fakes that import no private name of another)."""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from runner_helpers import Clock

from imagebatch.planning import apispec
from imagebatch.service.server import ServerOptions, running_server

KEY = "bedrock-api-key-0123456789-test"
ACCESS_KEY_ID = "AKIAFAKEBEDROCK00001"
MODEL = "stability.stable-image-ultra-v1:1"
PATH = f"/model/{MODEL}/invoke"
SERVICE = Path(__file__).resolve().parents[1] / "pipeline" / "service"


def sigv4(access_key_id: str) -> str:
    """An Authorization header shaped as SigV4's (the fake checks only the key id)."""
    return (f"AWS4-HMAC-SHA256 Credential={access_key_id}/20250101/us-west-2/bedrock/"
            "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)


async def invoke(url: str, doc: Any, *, auth: str | None = f"Bearer {KEY}",
                 path: str = PATH) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession() as session, session.post(
            url + path, data=json.dumps(doc).encode(), headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


Answer = tuple[int, dict[str, str], bytes]


def serve(options: ServerOptions, *calls: dict[str, Any]) -> list[Answer]:
    """Start a server with `options`, send each call (invoke's arguments) in turn."""
    async def scenario() -> list[Answer]:
        async with running_server(options) as srv:
            return [await invoke(srv.url, **call) for call in calls]

    return asyncio.run(scenario())


def decoded(payload: bytes) -> tuple[dict[str, Any], Image.Image]:
    doc = json.loads(payload)
    assert set(doc) == {"seeds", "finish_reasons", "images"}
    img = Image.open(io.BytesIO(base64.b64decode(doc["images"][0], validate=True)))
    img.load()
    return doc, img


def aws_error(answer: Answer, status: int, kind: str) -> str:
    got, headers, payload = answer
    assert got == status, payload[:300]
    assert headers["x-amzn-ErrorType"] == kind
    doc = json.loads(payload)
    assert set(doc) == {"message"} and doc["message"]
    assert KEY not in doc["message"] and ACCESS_KEY_ID not in doc["message"]
    return str(doc["message"])


# -- answers -----------------------------------------------------------------------------

@pytest.mark.parametrize(("ratio", "fmt"), [("1:1", "png"), ("16:9", "jpeg"), ("9:21", "png")])
def test_an_answer_is_bedrocks_shape_and_decodes_at_the_size_asked(ratio, fmt):
    (answer,) = serve(ServerOptions(flat=True, key=KEY), {"doc": {
        "prompt": "a lighthouse at dawn", "negative_prompt": "fog", "aspect_ratio": ratio,
        "seed": 4_294_967_295, "output_format": fmt}})
    status, headers, payload = answer
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert len(headers["x-amzn-RequestId"]) == 36
    doc, img = decoded(payload)
    assert doc["seeds"] == [4_294_967_295] and doc["finish_reasons"] == [None]
    assert img.format == {"png": "PNG", "jpeg": "JPEG"}[fmt]
    assert img.size == apispec.pixel_size({"aspect_ratio": ratio})


def test_defaults_a_random_seed_and_the_model_id_percent_encoded_as_sdks_send_it():
    calls = [{"doc": {"prompt": "p"}}, {"doc": {"prompt": "p"}},
             {"doc": {"prompt": "p", "seed": 3}, "path": PATH.replace(":", "%3A")}]
    answers = serve(ServerOptions(flat=True), *calls)
    seeds = []
    for status, _, payload in answers:
        assert status == 200, payload[:300]
        doc, img = decoded(payload)
        assert (img.format, img.size) == ("PNG", (1024, 1024))
        seeds.append(doc["seeds"][0])
    assert seeds[0] != seeds[1] and min(seeds[:2]) >= 1 and seeds[2] == 3


def test_an_input_image_and_strength_make_a_variation_of_its_shape():
    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), (40, 120, 90)).save(buf, format="JPEG")
    image = base64.b64encode(buf.getvalue()).decode()
    ok, alone = serve(ServerOptions(flat=True),
                      {"doc": {"prompt": "p", "image": image, "strength": 0.4, "seed": 2}},
                      {"doc": {"prompt": "p", "image": image}})
    assert ok[0] == 200, ok[2][:300]
    assert decoded(ok[2])[1].size == (1088, 896)  # 5:4, the nearest of the nine to 4:3
    assert "required key [strength]" in aws_error(alone, 400, "ValidationException")


def test_filtered_images_name_their_reason():
    prompt, output = serve(ServerOptions(flat=True, script={2: "content-filtered"}),
                           {"doc": {"prompt": "a cat [[filtered]]", "seed": 5}},
                           {"doc": {"prompt": "a cat", "seed": 5}})
    for answer, reason in ((prompt, "Filter reason: prompt"),
                           (output, "Filter reason: output image")):
        assert answer[0] == 200
        doc, img = decoded(answer[2])
        assert doc["finish_reasons"] == [reason] and img.size == (1024, 1024)


# -- keys ----------------------------------------------------------------------------------

def test_a_bearer_key_or_a_sigv4_header_naming_the_access_key_id_is_accepted():
    options = ServerOptions(flat=True, key=KEY, aws_access_key_id=ACCESS_KEY_ID, workers=1)
    doc = {"prompt": "p", "seed": 1}
    answers = serve(options, *({"doc": doc, "auth": auth} for auth in (
        f"Bearer {KEY}", sigv4(ACCESS_KEY_ID), None, "Bearer wrong", KEY,
        sigv4("AKIAOTHERKEY00000000"), f"Bearer {ACCESS_KEY_ID}")))
    assert [a[0] for a in answers[:2]] == [200, 200]
    for answer in answers[2:]:
        aws_error(answer, 403, "AccessDeniedException")


def test_sigv4_is_refused_when_no_access_key_id_is_configured():
    (answer,) = serve(ServerOptions(flat=True, key=KEY),
                      {"doc": {"prompt": "p"}, "auth": sigv4(ACCESS_KEY_ID)})
    aws_error(answer, 403, "AccessDeniedException")


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "part"), [
    ({"seed": 1}, "required key [prompt] not found"),
    ({"prompt": ""}, "#/prompt"),
    ({"prompt": "p" * 10_001}, "maxLength: 10000"),
    ({"prompt": "p", "output_format": "webp"}, "#/output_format"),
    ({"prompt": "p", "aspect_ratio": "4:3"}, "#/aspect_ratio"),
    ({"prompt": "p", "seed": -1}, "#/seed"),
    ({"prompt": "p", "size": "1024x1024"}, "extraneous key [size]"),
    (["p"], "JSONObject"),
])
def test_a_body_bedrock_refuses_is_a_validation_exception(doc, part):
    (answer,) = serve(ServerOptions(flat=True), {"doc": doc})
    assert part in aws_error(answer, 400, "ValidationException")


def test_an_unknown_model_id_is_a_validation_exception():
    (answer,) = serve(ServerOptions(flat=True),
                      {"doc": {"prompt": "p"}, "path": "/model/stability.sd3-large-v1:0/invoke"})
    assert "model identifier is invalid" in aws_error(answer, 400, "ValidationException")


@pytest.mark.parametrize(("fault", "status", "kind"), [
    ("429", 429, "ThrottlingException"),
    ("quota", 400, "ServiceQuotaExceededException"),
    ("model-timeout", 408, "ModelTimeoutException"),
    ("500", 500, "InternalServerException"),
    ("503", 503, "ServiceUnavailableException"),
])
def test_each_fault_is_the_aws_error_scripted_or_drawn(fault, status, kind):
    scripted = serve(ServerOptions(flat=True, script={1: fault}),
                     {"doc": {"prompt": "p", "seed": 1}}, {"doc": {"prompt": "p", "seed": 1}})
    aws_error(scripted[0], status, kind)
    assert scripted[1][0] == 200  # only the scripted request
    (drawn,) = serve(ServerOptions(flat=True, fail_rate=1.0, faults=(fault,)),
                     {"doc": {"prompt": "p", "seed": 1}})
    aws_error(drawn, status, kind)
    assert "Retry-After" not in drawn[1]


@pytest.mark.parametrize(("code", "kind"), [
    (400, "ValidationException"), (403, "AccessDeniedException"),
    (404, "ResourceNotFoundException"), (408, "ModelTimeoutException"),
    (429, "ThrottlingException"), (500, "InternalServerException"),
    (503, "ServiceUnavailableException"),
])
def test_fail_in_the_prompt_is_that_aws_error(code, kind):
    (answer,) = serve(ServerOptions(flat=True), {"doc": {"prompt": f"p [[fail:{code}]]"}})
    aws_error(answer, code, kind)


@pytest.mark.parametrize("kind", ["truncate", "bad-base64", "not-image", "html"])
def test_body_faults_spoil_a_200(kind):
    (answer,) = serve(ServerOptions(flat=True, script={1: kind}), {"doc": {"prompt": "p"}})
    status, _, payload = answer
    assert status == 200
    with pytest.raises((ValueError, AssertionError, Image.UnidentifiedImageError)):
        decoded(payload)


def test_throttling_on_the_servers_clock_slides_with_its_window():
    clock = Clock()
    options = ServerOptions(flat=True, rpm=2, window=60.0, clock=clock, sleep=clock.sleep)

    async def scenario() -> list[int]:
        statuses = []
        async with running_server(options) as srv:
            for step in (0.0, 1.0, 1.0, 57.0, 1.0):  # seconds passed before each request
                clock.now += step
                status, headers, payload = await invoke(srv.url, {"prompt": "p", "seed": 1})
                if status == 429:
                    aws_error((status, headers, payload), 429, "ThrottlingException")
                    assert "Retry-After" not in headers
                statuses.append(status)
        return statuses

    # the first request leaves the window 60 s after it came: at 60 s, not at 59
    assert asyncio.run(scenario()) == [200, 200, 429, 429, 200]


# -- the package's shape ---------------------------------------------------------------------

FAKES = ("heroku", "stability", "bedrock")


def _imports(module: str) -> list[tuple[str, str]]:
    """(module imported from, inside the service package, name) for each relative import."""
    tree = ast.parse((SERVICE / f"{module}.py").read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                found.append((node.module or "", alias.name))
    return found


def test_the_fakes_import_the_pipeline_and_no_other_fake():
    for fake in FAKES:
        for source, name in _imports(fake):
            assert source in ("faults", "render"), (fake, source, name)
            assert not name.startswith("_"), (fake, source, name)
    assert {source for source, _ in _imports("faults")} <= {"render"}  # nothing imports back
    assert {source for source, _ in _imports("server")} >= {*FAKES, "faults"}


def test_importing_a_fake_loads_neither_the_app_nor_another_fake():
    script = ("import sys, importlib\n"
              "for fake in ('heroku', 'stability', 'bedrock'):\n"
              "    for m in [m for m in sys.modules if m.startswith('imagebatch.service')]:\n"
              "        del sys.modules[m]\n"
              "    importlib.import_module('imagebatch.service.' + fake)\n"
              "    print(fake, sorted(m.rsplit('.', 1)[1] for m in sys.modules\n"
              "                       if m.startswith('imagebatch.service.')))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == [f"{fake} {sorted([fake, 'faults', 'render'])}" for fake in FAKES]

"""Clients people already use, unchanged, against the embedded server: curl, requests, openai.

The server runs in a thread with its own event loop (these clients block), or as
`serve(...)` in a subprocess for the foreground-command behaviour.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from stress_helpers import in_thread

from imagebatch.service.server import RunningServer, ServerOptions, running_server

ROOT = Path(__file__).resolve().parent.parent
KEY = "inf-test-key"
# one worker runs them all: litellm and openai take seconds of CPU to import, once a process
pytestmark = [
    pytest.mark.together,
    # litellm's own models, as pydantic builds their schemas at import: nothing of ours
    pytest.mark.filterwarnings("ignore::UserWarning:pydantic._internal._generate_schema"),
]


def server_in_thread(options: ServerOptions) -> contextlib.AbstractContextManager[RunningServer]:
    """running_server on its own loop in a daemon thread, for blocking clients."""
    return in_thread(lambda: running_server(options))


@pytest.fixture(scope="module")
def keyed() -> Iterator[RunningServer]:
    # flat pictures: these clients are checked for the shape, size and format of what they
    # get back, which a flat picture has as a landscape does, made in a thread
    with server_in_thread(ServerOptions(key=KEY, workers=1, flat=True)) as srv:
        yield srv


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


PAYLOAD = {
    "model": "stable-image-ultra",
    "prompt": "A surreal landscape with glowing mushrooms under a night sky.",
    "negative_prompt": "blurry",
    "aspect_ratio": "16:9",
    "seed": 123,
}


def test_curl_pipeline_from_the_provider_docs(keyed, tmp_path):
    for tool in ("curl", "jq", "base64", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    # Pretty-printed on purpose: curl -d drops the newlines and sends form content type.
    (tmp_path / "body.json").write_text(json.dumps(PAYLOAD, indent=2) + "\n")
    script = ('set -o pipefail; curl -s "$DIFFUSION_URL/v1/images/generations" '
              '-H "Authorization: Bearer $DIFFUSION_KEY" -d @body.json '
              "| jq -r '.data[0].b64_json' | base64 --decode > x.png")
    env = {**os.environ, "DIFFUSION_URL": keyed.url, "DIFFUSION_KEY": KEY}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    img = decode_png((tmp_path / "x.png").read_bytes())
    assert (img.format, img.size) == ("PNG", (1344, 768))

    # The same body twice gives the same file: what makes seed sweeps reproducible.
    proc = subprocess.run(["bash", "-c", script.replace("x.png", "y.png")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "y.png").read_bytes() == (tmp_path / "x.png").read_bytes()


def test_curl_with_a_wrong_key_gets_a_json_401(keyed, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / "body.json").write_text(json.dumps(PAYLOAD))
    proc = subprocess.run(
        ["curl", "-s", "-w", "\\n%{http_code}", f"{keyed.url}/v1/images/generations",
         "-H", "Authorization: Bearer inf-wrong", "-d", "@body.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    body, _, code = proc.stdout.rpartition("\n")
    assert code == "401"
    assert json.loads(body)["error"]["type"] == "authentication_error"


REQUESTS_SCRIPT = textwrap.dedent("""
    import base64, json, os, sys
    import requests

    url = os.environ["DIFFUSION_URL"]
    payload = {"model": "stable-image-ultra", "prompt": "A red fox in fresh snow",
               "size": "832x1216", "output_format": "jpeg", "seed": 42}
    headers = {"Authorization": "Bearer " + os.environ["DIFFUSION_KEY"]}
    r = requests.post(url + "/v1/images/generations", headers=headers, data=json.dumps(payload))
    r.raise_for_status()
    with open(sys.argv[1], "wb") as fh:
        fh.write(base64.b64decode(r.json()["data"][0]["b64_json"]))
    r = requests.post(url + "/v1/images/generations", headers=headers,
                      data=json.dumps({**payload, "response_format": "url"}))
    r.raise_for_status()
    image = requests.get(r.json()["data"][0]["url"])
    image.raise_for_status()
    with open(sys.argv[2], "wb") as fh:
        fh.write(image.content)
""")


def test_requests_script(keyed, tmp_path):
    pytest.importorskip("requests")
    (tmp_path / "gen.py").write_text(REQUESTS_SCRIPT)
    env = {**os.environ, "DIFFUSION_URL": keyed.url, "DIFFUSION_KEY": KEY}
    proc = subprocess.run([sys.executable, "gen.py", "a.jpg", "b.jpg"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    a = decode_png((tmp_path / "a.jpg").read_bytes())
    assert (a.format, a.size) == ("JPEG", (832, 1216))
    assert (tmp_path / "b.jpg").read_bytes() == (tmp_path / "a.jpg").read_bytes()


def test_openai_client_images_generate(keyed):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(
        model="stable-image-ultra", prompt="A lighthouse in a storm",
        response_format="b64_json", extra_body={"aspect_ratio": "16:9", "seed": 5},
    )
    assert len(result.data) == 1 and isinstance(result.created, int)
    img = decode_png(base64.b64decode(result.data[0].b64_json))
    assert (img.format, img.size) == ("PNG", (1344, 768))

    again = client.images.generate(
        model="stable-image-ultra", prompt="A lighthouse in a storm",
        response_format="b64_json", extra_body={"aspect_ratio": "16:9", "seed": 5},
    )
    assert again.data[0].b64_json == result.data[0].b64_json


def test_openai_client_sees_typed_errors(keyed):
    openai = pytest.importorskip("openai")
    wrong = openai.OpenAI(base_url=keyed.url + "/v1", api_key="inf-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.images.generate(model="stable-image-ultra", prompt="x")
    assert info.value.status_code == 401
    right = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        right.images.generate(model="stable-image-ultra", prompt="x",
                              extra_body={"aspect_ratio": "4:3"})
    assert "aspect_ratio" in str(bad.value)
    with pytest.raises(openai.PermissionDeniedError):
        right.images.generate(model="stable-image-ultra", prompt="no [[fail:403]]")


# -- Stability's shape: the sample in Stability's own API reference, and litellm -------------

STABILITY_URL = "/v2beta/stable-image/generate/ultra"


def test_requests_multipart_as_in_stabilitys_api_reference(keyed, tmp_path):
    requests = pytest.importorskip("requests")
    # Stability's Python sample forces a multipart body with an empty file part named
    # `none`; the real service ignores it, and so must the embedded server
    response = requests.post(
        keyed.url + STABILITY_URL,
        headers={"authorization": f"Bearer {KEY}", "accept": "image/*"},
        files={"none": ""},
        data={"prompt": "Lighthouse on a cliff overlooking the ocean", "output_format": "webp",
              "aspect_ratio": "9:16", "seed": 8},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["finish-reason"] == "SUCCESS" and response.headers["seed"] == "8"
    img = decode_png(response.content)
    assert (img.format, img.size) == ("WEBP", (768, 1344))

    # image-to-image: the file goes as `image`, with its strength
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    response = requests.post(
        keyed.url + STABILITY_URL,
        headers={"authorization": f"Bearer {KEY}", "accept": "application/json"},
        files={"image": ("lighthouse.png", buf.getvalue(), "image/png")},
        data={"prompt": "the same lighthouse at night", "strength": 0.6, "seed": 8},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json; type=image/png"
    doc = response.json()
    assert doc["finish_reason"] == "SUCCESS" and doc["seed"] == 8
    assert decode_png(base64.b64decode(doc["image"])).size == (768, 1344)  # the input's shape


@pytest.fixture(scope="module")
def litellm() -> Any:
    # offline: litellm reads its model prices from its own copy, not from the network
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return pytest.importorskip("litellm")


def test_litellm_stability_provider(keyed, litellm):
    result = litellm.image_generation(model="stability/stable-image-ultra", prompt="a red fox",
                                      api_base=keyed.url, api_key=KEY, size="1024x1024")
    (item,) = result.data
    img = decode_png(base64.b64decode(item.b64_json))
    assert (img.format, img.size) == ("PNG", (1024, 1024))
    # a refused key comes back as Stability's error (litellm picks the exception class)
    with pytest.raises(Exception) as info:  # noqa: B017
        litellm.image_generation(model="stability/stable-image-ultra", prompt="x",
                                 api_base=keyed.url, api_key="sk-wrong")
    assert "unauthorized" in str(info.value) and "sk-wrong" not in str(info.value)


def test_litellm_openai_compatible_shape_for_heroku(keyed, litellm):
    result = litellm.image_generation(model="openai/stable-image-ultra",
                                      prompt="a lighthouse in a storm",
                                      api_base=keyed.url + "/v1", api_key=KEY)
    (item,) = result.data
    img = decode_png(base64.b64decode(item.b64_json))
    assert (img.format, img.size) == ("PNG", (1024, 1024))


SERVE = ("from imagebatch.service.server import ServerOptions, serve\n"
         "if __name__ == '__main__':\n"
         "    serve(ServerOptions(key={key!r}, workers=1, rpm=5, flat=True), '127.0.0.1', 0)\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_in_the_foreground_prints_its_url_and_stops_cleanly(tmp_path, sig):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / "serve_main.py").write_text(SERVE.format(key=KEY))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "serve_main.py"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.fullmatch(r"serving on (http://127\.0\.0\.1:(\d+))\n", first)
        assert match, first
        url = match.group(1)
        (tmp_path / "body.json").write_text(json.dumps(PAYLOAD))
        out = subprocess.run(
            ["curl", "-s", "-D", "-", f"{url}/v1/images/generations",
             "-H", f"Authorization: Bearer {KEY}", "-d", "@body.json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False).stdout
        head, _, payload = out.partition("\n\n")  # text mode turned CRLF into LF
        assert head.startswith("HTTP/1.1 200")
        assert "x-ratelimit-remaining-requests: 4" in head.lower()
        assert decode_png(base64.b64decode(json.loads(payload)["data"][0]["b64_json"])).size == (
            1344, 768)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert "stopping" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

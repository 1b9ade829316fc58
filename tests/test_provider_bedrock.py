"""Amazon Bedrock as the third provider: choosing it, its request (bearer token or SigV4
signed by botocore), its answers, filtered images and AWS's error kinds, against a small
recording aiohttp server on 127.0.0.1; and a mixed pool of all three providers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import io
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from runner_helpers import image_bytes

from imagebatch.errors import AuthError, ConfigError, PermanentApiError, RetryableApiError
from imagebatch.planning.manifest import load_plan, load_plans
from imagebatch.providers import connect, get
from imagebatch.providers.bedrock import BEDROCK, DEFAULT_RPM, Bedrock, error_type
from imagebatch.providers.heroku import HEROKU
from imagebatch.providers.stability import STABILITY
from imagebatch.running.client import ApiClient
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.service.server import ServerOptions, running_server

ACCESS = "AKIDEXAMPLE0123456789"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION = "FQoGZXIvYXdzEXAMPLEsessionTOKEN0123456789"
TOKEN = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlLXRva2VuLTAxMjM0NTY3ODk="
FROZEN = datetime.datetime(2026, 3, 1, 12, 30, 45)


@pytest.fixture(autouse=True)
def _aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fixed AWS credentials from the environment alone (no profile, no file, no IMDS)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: FROZEN)


def manifest(tmp_path: Path, extra: str = "", seeds: str = "[1, 2]") -> str:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nname: bed\njobs:\n  - id: fox\n    prompt: a red fox\n"
                    f"    aspect_ratio: '1:1'\n{extra}    seeds: {seeds}\n", encoding="utf-8")
    return str(path)


def answer(png: bytes | None = None, seed: int = 7, reason: str | None = None) -> dict[str, Any]:
    png = image_bytes("png", (64, 64)) if png is None else png
    return {"images": [base64.b64encode(png).decode()], "seeds": [seed],
            "finish_reasons": [reason]}


Reply = Callable[[dict], web.Response]


@contextlib.asynccontextmanager
async def bedrock_server(reply: Reply | None = None) -> AsyncIterator[tuple[str, list[dict]]]:
    """A fake bedrock-runtime recording each request as received (method, raw path, headers,
    body); `reply(record)` answers it, a 1:1 PNG by default."""
    seen: list[dict] = []

    async def invoke(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"method": request.method, "path": request.raw_path,
                     "host": request.host, "headers": dict(request.headers), "body": body})
        if reply is not None:
            return reply(seen[-1])
        return web.json_response(answer(seed=len(seen)))

    app = web.Application()
    app.router.add_post("/model/{model}/invoke", invoke)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def send(url: str, job, key: str = "", provider=BEDROCK):
    async with aiohttp.ClientSession() as session:
        client = ApiClient(session, url, key, provider=provider,
                           key_variable="AWS_BEARER_TOKEN_BEDROCK" if key else "AWS creds")
        try:
            return await client.generate(job)
        except Exception as exc:  # noqa: BLE001 - the test looks at what came out
            return exc


# -- choosing it ------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "url", "variable"), [
    ({"P_PROVIDER": "bedrock"}, "https://bedrock-runtime.us-west-2.amazonaws.com",
     "the AWS credentials"),
    ({"P_PROVIDER": "bedrock", "P_REGION": "eu-central-1"},
     "https://bedrock-runtime.eu-central-1.amazonaws.com", "the AWS credentials"),
    ({"P_PROVIDER": "Bedrock", "AWS_REGION": "us-east-1"},
     "https://bedrock-runtime.us-east-1.amazonaws.com", "the AWS credentials"),
    ({"P_URL": "https://bedrock-runtime.ap-northeast-1.amazonaws.com/"},
     "https://bedrock-runtime.ap-northeast-1.amazonaws.com", "the AWS credentials"),
    ({"P_PROVIDER": "bedrock", "AWS_BEARER_TOKEN_BEDROCK": TOKEN},
     "https://bedrock-runtime.us-west-2.amazonaws.com", "AWS_BEARER_TOKEN_BEDROCK"),
])
def test_the_environment_names_bedrock(env, url, variable):
    conn = connect.connection({**env, "AWS_ACCESS_KEY_ID": ACCESS}, "P")
    assert conn.provider is BEDROCK and conn.url == url
    assert conn.key_variable.startswith(variable)
    assert TOKEN not in repr(conn)


def test_bedrock_without_aws_in_the_environment_is_the_embedded_server():
    conn = connect.connection({"P_PROVIDER": "bedrock"}, "P")
    assert conn.local and conn.provider is BEDROCK
    with pytest.raises(ConfigError, match="P_MODEL_ID is 'dall-e'"):
        connect.connection({"P_PROVIDER": "bedrock", "P_REGION": "us-west-2",
                            "P_MODEL_ID": "dall-e"}, "P")
    with pytest.raises(ConfigError, match="use one of heroku, stability, bedrock"):
        connect.connection({"P_PROVIDER": "midjourney"}, "P")


def test_a_pool_may_mix_all_three_providers():
    env = {"A_URL": "https://us.inference.heroku.com", "A_KEY": "inf-123456",
           "B_PROVIDER": "stability", "B_KEY": "sk-1234567",
           "C_PROVIDER": "bedrock", "C_REGION": "us-west-2"}
    members, _ = connect.pool(env, ["A", "B", "C"])
    assert [m.provider for m in members] == [HEROKU, STABILITY, BEDROCK]
    assert members[2].url == "https://bedrock-runtime.us-west-2.amazonaws.com"
    assert connect.status_backends(env, ["A", "B", "C"], False)["C"] == members[2].url


# -- the request and the key ------------------------------------------------------------


def test_bedrock_keys_differ_from_herokus_and_its_body_is_what_it_takes(tmp_path):
    path = manifest(tmp_path, "    negative_prompt: fog\n    output_format: jpeg\n")
    (heroku, _) = load_plan(path).jobs
    (bedrock, _) = load_plan(path, providers=(BEDROCK,)).jobs
    assert bedrock.key != heroku.key and bedrock.provider is BEDROCK
    assert bedrock.request == {**heroku.request, "provider": "bedrock"}
    out = BEDROCK.request(bedrock, "https://bedrock-runtime.us-west-2.amazonaws.com",
                          TOKEN, "image/*")
    assert out.url == ("https://bedrock-runtime.us-west-2.amazonaws.com/model/"
                       "stability.stable-image-ultra-v1:1/invoke")
    assert json.loads(out.body) == {"prompt": "a red fox", "negative_prompt": "fog",
                                    "aspect_ratio": "1:1", "seed": 1, "output_format": "jpeg"}
    assert out.headers["Authorization"] == f"Bearer {TOKEN}"
    # size and webp are refused at planning, at their location, as for Stability
    with pytest.raises(Exception, match="bedrock provider has no `size`"):
        load_plan(manifest(tmp_path, "    size: 1024x1024\n"), providers=(BEDROCK,))
    with pytest.raises(Exception, match="bedrock provider makes only png, jpeg"):
        load_plan(manifest(tmp_path, "    output_format: webp\n"), providers=(BEDROCK,))


def test_an_input_image_is_sent_as_base64(tmp_path):
    src = image_bytes("png", (96, 96))
    (tmp_path / "in.png").write_bytes(src)
    path = manifest(tmp_path, "    image: in.png\n    strength: 0.4\n", seeds="[3]")
    (job,) = load_plan(path, providers=(BEDROCK,)).jobs
    sent = json.loads(BEDROCK.body(job))
    assert base64.b64decode(sent["image"]) == src and sent["strength"] == 0.4
    (tmp_path / "in.png").write_bytes(image_bytes("png", (97, 97)))
    with pytest.raises(PermanentApiError, match="changed since the plan"):
        BEDROCK.body(job)


async def test_sigv4_matches_botocores_own_signer_on_the_request_received(tmp_path):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    fresh = Bedrock()  # its credentials resolved here, from this test's environment
    (job, _) = load_plan(manifest(tmp_path), providers=(fresh,)).jobs
    async with bedrock_server() as (url, seen):
        image = await send(url, job, provider=fresh)
    assert not isinstance(image, Exception), image
    (got,) = seen
    headers = got["headers"]
    assert got["path"] == "/model/stability.stable-image-ultra-v1:1/invoke"
    assert headers["X-Amz-Date"] == "20260301T123045Z"
    assert headers["X-Amz-Security-Token"] == SESSION
    # recomputed from what the server received, with fixed credentials and the frozen time
    again = AWSRequest(method="POST", url=f"http://{got['host']}{got['path']}",
                       data=got["body"], headers={"Content-Type": headers["Content-Type"],
                                                  "Accept": headers["Accept"]})
    SigV4Auth(Credentials(ACCESS, SECRET, SESSION), "bedrock", "us-west-2").add_auth(again)
    assert headers["Authorization"] == again.headers["Authorization"]
    assert f"Credential={ACCESS}/20260301/us-west-2/bedrock/aws4_request" in \
        headers["Authorization"]
    assert json.loads(got["body"]) == {"prompt": "a red fox", "aspect_ratio": "1:1",
                                       "seed": 1, "output_format": "png"}
    assert image.seed == 1 and (image.width, image.height) == (64, 64)
    Image.open(io.BytesIO(image.data)).verify()


async def test_the_bearer_token_path_signs_nothing(tmp_path):
    (job, _) = load_plan(manifest(tmp_path), providers=(BEDROCK,)).jobs
    async with bedrock_server() as (url, seen):
        image = await send(url, job, key=TOKEN)
    assert not isinstance(image, Exception), image
    (got,) = seen
    assert got["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert "X-Amz-Date" not in got["headers"] and ACCESS not in str(got["headers"])


# -- answers and statuses ---------------------------------------------------------------


def aws_error(status: int, kind: str, message: str) -> Reply:
    return lambda _r: web.json_response({"message": message}, status=status,
                                        headers={"x-amzn-ErrorType": f"{kind}:http://x/"})


@pytest.mark.parametrize(("reply", "error", "kind", "retry_after"), [
    (lambda _r: web.json_response(answer(reason="Filter reason: prompt")),
     PermanentApiError, "content_filtered", None),
    (lambda _r: web.json_response(answer(reason="Filter reason: output image")),
     PermanentApiError, "content_filtered", None),
    (lambda _r: web.json_response(answer(reason="Inference error")),
     RetryableApiError, "finish_reason", None),
    (lambda _r: web.json_response({"images": [], "seeds": []}),
     RetryableApiError, "format", None),
    (aws_error(400, "ValidationException", "bad aspect_ratio"), PermanentApiError,
     "permanent", None),
    (aws_error(403, "AccessDeniedException", "no access to the model"), AuthError, "auth", None),
    (aws_error(404, "ResourceNotFoundException", "no such model"), PermanentApiError,
     "permanent", None),
    (aws_error(408, "ModelTimeoutException", "took too long"), RetryableApiError, "http", None),
    (aws_error(429, "ThrottlingException", "slow down"), RetryableApiError, "http", 10.0),
    (aws_error(400, "ServiceQuotaExceededException", "quota"), RetryableApiError, "http", 60.0),
    (aws_error(429, "ModelNotReadyException", "warming up"), RetryableApiError, "http", 10.0),
    (aws_error(500, "InternalServerException", "oops"), RetryableApiError, "http", None),
    (aws_error(503, "ServiceUnavailableException", "later"), RetryableApiError, "http", None),
])
async def test_each_answer_and_error_kind(tmp_path, reply, error, kind, retry_after):
    (job, _) = load_plan(manifest(tmp_path), providers=(BEDROCK,)).jobs
    async with bedrock_server(reply) as (url, seen):
        result = await send(url, job, key=TOKEN)
    assert len(seen) == 1
    assert type(result) is error and result.kind == kind, result
    assert result.retry_after == retry_after if isinstance(result, RetryableApiError) else True
    if kind == "auth":
        assert "AWS_BEARER_TOKEN_BEDROCK" in str(result)
        assert "AccessDeniedException: no access to the model" in str(result)


def test_error_type_and_pacing():
    assert error_type({"x-amzn-ErrorType": "ThrottlingException:http://internal/"}) == \
        "ThrottlingException"
    assert BEDROCK.pace(None, 20, True, False) == (float(DEFAULT_RPM), False)
    assert BEDROCK.pace(120, 20, True, False) == (120, False)
    assert BEDROCK.pace(None, None, False, True) == (None, False)
    paced = BEDROCK.pacing_headers({"x-amzn-ErrorType": "ThrottlingException"}, 429)
    assert paced["Retry-After"] == "10"
    assert get("bedrock") is BEDROCK


# -- no credential in any output --------------------------------------------------------


async def test_no_credential_appears_in_any_error(tmp_path):
    def echo(record: dict) -> web.Response:  # a server that quotes what it was sent
        sent = " ".join(f"{k}={v}" for k, v in record["headers"].items())
        return web.json_response({"message": f"denied: {sent}"}, status=403,
                                 headers={"x-amzn-ErrorType": "AccessDeniedException"})

    fresh = Bedrock()
    (job, _) = load_plan(manifest(tmp_path), providers=(fresh,)).jobs
    async with bedrock_server(echo) as (url, _seen):
        signed = await send(url, job, provider=fresh)
        bearer = await send(url, job, key=TOKEN, provider=fresh)
    for result in (signed, bearer):
        assert isinstance(result, AuthError)
        for secret in (SECRET, SESSION, TOKEN):
            assert secret not in str(result)
    assert ACCESS not in str(signed) and "denied: " in str(signed)


# -- a mixed pool of all three ----------------------------------------------------------


async def test_a_pool_of_heroku_stability_and_bedrock_makes_every_image(tmp_path):
    path = manifest(tmp_path, seeds="{start: 1, count: 9}")
    err = io.StringIO()
    async with running_server(ServerOptions(flat=True, key="inf-HEROKU-123", workers=1)) as h, \
            running_server(ServerOptions(flat=True, key="sk-STAB-1234567", workers=1)) as s, \
            bedrock_server() as (b_url, seen):
        env = {"H_URL": h.url, "H_KEY": "inf-HEROKU-123",
               "S_PROVIDER": "stability", "S_URL": s.url, "S_KEY": "sk-STAB-1234567",
               "B_PROVIDER": "bedrock", "B_URL": b_url, "B_KEY": TOKEN}
        conns, _ = connect.pool(env, ["H", "S", "B"])
        (plan,) = await asyncio.to_thread(load_plans, [path], env, ["H", "S", "B"])
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=6000,
                          concurrency=3)
        report = await run_plans([plan], conns, opts, err, env=env)
    assert report.plans[0].succeeded == 9
    assert seen, "the Bedrock member was sent nothing"
    records = [json.loads(line) for line in
               (tmp_path / "out/bed/results.jsonl").read_text().splitlines()]
    by_member = {r.get("member") for r in records}
    assert "B" in by_member
    for job in plan.jobs:  # every image decodes, whoever made it
        with Image.open(tmp_path / "out/bed/images" / job.path) as img:
            img.verify()
    assert TOKEN not in err.getvalue()

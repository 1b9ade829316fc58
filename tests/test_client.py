"""Each failure class of one request, against a real HTTP(S) service on 127.0.0.1 that
answers as each test scripts (http_helpers)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import aiohttp
import pytest
from http_helpers import service
from PIL import Image
from runner_helpers import KEY, image_bytes, make_job

from imagebatch.errors import AuthError, PermanentApiError, RetryableApiError
from imagebatch.planning.config import backend_name
from imagebatch.running.client import ApiClient, check_image

BASE = "https://inference.example.test"
URL = BASE + "/v1/images/generations"


def ok_body(data: bytes) -> dict:
    return {"created": 1745612037, "data": [{"b64_json": base64.b64encode(data).decode(),
                                              "revised_prompt": ""}]}


async def call(mock_setup, job=None, *, trusted=True, **kw):
    """Script the service's answers, make one generate() call, return (result or exception,
    client, the requests the service received, what observe heard)."""
    job = job or make_job()
    seen = []
    async with service() as m:
        m.route("inference.example.test", 443)
        mock_setup(m)
        async with m.session(trusted=trusted) as session:
            client = ApiClient(session, BASE, KEY, **kw)
            try:
                result = await client.generate(job, lambda h, s: seen.append((s, dict(h))))
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                result = exc
        sent = list(m.requests)
    return result, client, sent, seen


async def test_ok_png_is_returned_checked_and_body_sent_as_is():
    data = image_bytes("png")
    job = make_job()
    result, client, sent, _ = await call(lambda m: m.post(URL, payload=ok_body(data)), job)
    assert result.data == data and result.format == "png"
    assert (result.width, result.height) == (1024, 1024)
    assert result.created == 1745612037
    assert client.requests == 1
    assert sent[0].body == job.body.encode()
    assert sent[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_ok_jpeg_and_explicit_size():
    job = make_job(fmt="jpeg", size="1344x768")
    data = image_bytes("jpeg", (1344, 768))
    result, *_ = await call(lambda m: m.post(URL, payload=ok_body(data)), job)
    assert (result.format, result.width, result.height) == ("jpeg", 1344, 768)


async def test_url_response_is_downloaded_and_checked():
    data = image_bytes("png")

    def setup(m):
        m.post(URL, payload={"created": 1, "data": [{"url": "/files/x.png"}]})
        m.get(BASE + "/files/x.png", body=data)

    result, client, sent, _ = await call(setup)
    assert result.data == data
    assert client.requests == 2 == len(sent)


def _headers_of(sent, method):
    return [seen.headers for seen in sent if seen.method == method]


@pytest.mark.parametrize(("image_url", "gets_key"), [
    (BASE + "/files/x.png", True),  # the service's own origin
    ("/files/x.png", True),
    ("http://inference.example.test/files/x.png", False),  # same host, clear text
    ("https://inference.example.test:8443/files/x.png", False),  # another port
    ("https://images.example.test/x.png", False),  # another host
])
async def test_the_key_goes_to_an_image_url_only_on_the_services_own_origin(image_url, gets_key):
    data = image_bytes("png")
    full = image_url if image_url.startswith("http") else BASE + image_url
    def setup(m):
        m.post(URL, payload={"created": 1, "data": [{"url": image_url}]})
        m.get(full, body=data)

    result, _, sent, _ = await call(setup)
    assert result.data == data
    assert [seen.url for seen in sent] == [URL, full]
    (post,), (get,) = _headers_of(sent, "POST"), _headers_of(sent, "GET")
    assert post["Authorization"] == f"Bearer {KEY}"
    assert ("Authorization" in get) is gets_key
    assert post["Accept-Encoding"] == get["Accept-Encoding"] == "identity"


async def test_an_image_host_that_cannot_be_reached_is_this_jobs_retryable_failure():
    def setup(m):
        m.post(URL, payload={"created": 1, "data": [{"url": "https://images.example.test/x"}]})
        m.refuse("images.example.test", 443)

    result, client, sent, _ = await call(setup)
    assert len(sent) == 1 and client.requests == 1  # the download never reached a server
    assert isinstance(result, RetryableApiError)
    assert result.kind == "download"  # not "unreachable", which would blame DIFFUSION_URL
    assert result.message == ("image download: cannot connect to images.example.test:443 "
                              "(Connection refused)")


async def test_a_tls_failure_says_tls_not_operation_not_permitted():
    # the service's certificate is self-signed and this session does not trust it
    result, _, sent, _ = await call(lambda m: m.post(URL, payload={}), trusted=False)
    assert sent == []
    assert isinstance(result, RetryableApiError) and result.kind == "unreachable"
    assert "TLS: self-signed certificate" in result.message
    assert "not permitted" not in result.message


@pytest.mark.parametrize("key", ["inf-SECRET\\KEY987", "inf-SECRET'KEY987",
                                 "inf-SECRET\u2019KEY987"])
async def test_the_key_is_scrubbed_in_escaped_and_quoted_forms(key):
    from urllib.parse import quote

    echoed = f"headers={{'X-Echo': {'Bearer ' + key!r}}} url=/?k={quote(key, safe='')}"
    # A server (or a proxy) that echoes the request back as its status line: aiohttp's
    # parser error quotes the line as bytes, and the error's text quotes that again.
    async with service() as m:
        m.post(URL, body=echoed.encode("utf-8") + b"\r\n\r\n", action="raw")
        async with m.session() as session:
            with pytest.raises(RetryableApiError) as info:
                await ApiClient(session, BASE, key).generate(make_job())
        assert len(m.requests) == 1
    text = str(info.value)
    assert info.value.kind == "connection"
    assert "SECRET" not in text and "KEY987" not in text, text


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_retryable(status):
    result, *_ = await call(lambda m: m.post(URL, status=status, body="<html>bad gateway</html>",
                                             content_type="text/html"))
    assert isinstance(result, RetryableApiError) and result.status == status
    assert result.retry_after is None


async def test_429_with_retry_after_and_server_message():
    err = {"error": {"code": 429, "message": "Rate limit exceeded", "type": "rate_limit_error"}}
    result, _, _, seen = await call(lambda m: m.post(
        URL, status=429, payload=err,
        headers={"Retry-After": "7", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-reset-requests": "51s"}))
    assert isinstance(result, RetryableApiError)
    assert result.retry_after == 7.0 and "Rate limit exceeded" in result.message
    assert seen[0][0] == 429 and seen[0][1]["x-ratelimit-reset-requests"] == "51s"


async def test_429_without_retry_after_uses_the_reset_header_else_nothing():
    result, *_ = await call(lambda m: m.post(
        URL, status=429, payload={}, headers={"x-ratelimit-reset-requests": "12s"}))
    assert result.retry_after == 12.0
    result, *_ = await call(lambda m: m.post(URL, status=429, payload={}))
    assert isinstance(result, RetryableApiError) and result.retry_after is None


@pytest.mark.parametrize("status", [400, 403, 404, 413, 422])
async def test_permanent_statuses_carry_the_servers_message(status):
    err = {"error": {"code": status, "message": f"nope {status}", "type": "invalid_request_error"}}
    result, *_ = await call(lambda m: m.post(URL, status=status, payload=err))
    assert type(result) is PermanentApiError
    assert result.message == f"nope {status}" and result.status == status


async def test_a_servers_message_is_one_printable_line():
    said = "bad\x1b]0;pwned\x07 prompt\n\nsee   docs" + "x" * 3000
    err = {"error": {"code": 400, "message": said, "type": "invalid_request_error"}}
    result, *_ = await call(lambda m: m.post(URL, status=400, payload=err))
    assert type(result) is PermanentApiError
    assert result.message.startswith(r"bad\x1b]0;pwned\x07 prompt see docs")
    assert "\x1b" not in result.message and "\n" not in result.message
    assert len(result.message) == 500


async def test_permanent_without_message_says_the_status():
    result, *_ = await call(lambda m: m.post(URL, status=404, body="not here"))
    assert type(result) is PermanentApiError and result.message == "HTTP 404"


@pytest.mark.parametrize("prefix", ["DIFFUSION", "INFERENCE"])
async def test_401_is_auth_error_naming_the_variable_not_the_key(prefix):
    err = {"error": {"code": 401, "message": f"bad key {KEY}", "type": "authentication_error"}}
    result, *_ = await call(lambda m: m.post(URL, status=401, payload=err),
                            key_variable=f"{prefix}_KEY")
    assert isinstance(result, AuthError)
    assert f"check {prefix}_KEY" in result.message and "401" in result.message
    assert KEY not in result.message and KEY not in str(result)


async def test_connection_reset_is_retryable_and_scrubbed():
    result, *_ = await call(lambda m: m.post(URL, action="disconnect"))
    assert isinstance(result, RetryableApiError) and result.kind == "connection"
    assert "ServerDisconnectedError" in result.message
    assert KEY not in str(result)
    # the connection closed halfway through the body
    result, *_ = await call(lambda m: m.post(URL, body=b'{"created": 1', action="truncate"))
    assert isinstance(result, RetryableApiError) and result.kind == "connection"


async def test_timeout_is_retryable():
    # a service that takes the request and never answers; the timeout is short to keep the
    # test quick (the message gives whatever --timeout was)
    result, *_ = await call(lambda m: m.post(URL, action="hang"), timeout=0.3)
    assert isinstance(result, RetryableApiError) and result.kind == "timeout"
    assert "within 0.3 s" in result.message


async def test_a_connection_that_never_opens_is_unreachable_not_a_slow_timeout(monkeypatch):
    from imagebatch.running import client as client_module

    async with aiohttp.ClientSession() as session:
        timeout = ApiClient(session, BASE, KEY, timeout=120)._timeout
    assert timeout.sock_connect == 10 and timeout.total == 120
    # the connect limit made short, so that the test does not wait 10 s for it
    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT", 0.3)
    result, client, sent, _ = await call(
        lambda m: m.hang_connect("inference.example.test", 443), timeout=120)
    assert isinstance(result, RetryableApiError) and result.kind == "unreachable"
    assert "no answer within 0.3 s" in result.message
    assert client._timeout.sock_connect == 0.3 and client._timeout.total == 120
    assert sent == [] and result.requests == 0


@pytest.mark.parametrize("body,ctype,kind", [
    ('{"created": 1, "data": [', "application/json", "bad_json"),
    ("<!DOCTYPE html><html><body>Application error</body></html>", "text/html", "html"),
    ("<html>oops</html>", "application/json", "html"),
    ('{"created": 1, "data": []}', "application/json", "format"),
    ('{"created": 1, "data": [{"revised_prompt": ""}]}', "application/json", "format"),
    ('{"created": 1, "data": [{"b64_json": "iVBOR!!not base64$$"}]}', "application/json",
     "bad_base64"),
    ('{"created": 1, "data": [{"b64_json": "' + base64.b64encode(b"hello world").decode() + '"}]}',
     "application/json", "not_image"),
])
async def test_bodies_that_lie_are_retryable(body, ctype, kind):
    result, *_ = await call(lambda m: m.post(URL, status=200, body=body, content_type=ctype))
    assert isinstance(result, RetryableApiError), result
    assert result.kind == kind
    if kind == "format":
        assert "unexpected response format" in result.message


async def test_wrong_format_is_retryable():
    result, *_ = await call(lambda m: m.post(URL, payload=ok_body(image_bytes("jpeg"))))
    assert isinstance(result, RetryableApiError) and result.kind == "wrong_format"


async def test_wrong_size_is_retryable():
    result, *_ = await call(lambda m: m.post(URL, payload=ok_body(image_bytes("png", (512, 512)))))
    assert isinstance(result, RetryableApiError) and result.kind == "wrong_size"


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
async def test_truncated_image_is_retryable(fmt):
    data = image_bytes(fmt, color=(1, 2, 3))
    result, *_ = await call(lambda m: m.post(URL, payload=ok_body(data[: len(data) * 2 // 3])),
                            make_job(fmt=fmt))
    assert isinstance(result, RetryableApiError) and result.kind == "truncated"


def test_png_with_a_bad_crc_is_refused():
    data = bytearray(image_bytes("png"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip a byte inside the compressed data; its CRC no longer matches
    with pytest.raises(RetryableApiError, match="corrupt|truncated"):
        check_image(bytes(data), make_job().request)


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 100_000])
def test_decompression_bomb_refused_before_decoding(side):
    with pytest.raises(RetryableApiError, match="refused"):
        check_image(_bomb_png(side, side), make_job().request)


async def test_body_over_the_cap_is_refused():
    big = json.dumps({"created": 1, "data": [{"b64_json": "A" * 200_000}]})
    result, *_ = await call(lambda m: m.post(URL, body=big), max_body=100_000)
    assert isinstance(result, RetryableApiError) and result.kind == "too_large"


def test_backend_name_strips_credentials_query_and_case():
    assert backend_name("https://user:pw@US.inference.heroku.com/?token=x#f") == \
        "https://us.inference.heroku.com"
    assert backend_name("http://127.0.0.1:8080/base/") == "http://127.0.0.1:8080/base"
    # the default port written out is the same service, the same name
    assert backend_name("https://us.inference.heroku.com:443") == \
        backend_name("https://us.inference.heroku.com")
    assert backend_name("http://127.0.0.1:80/") == "http://127.0.0.1"
    assert backend_name("http://127.0.0.1:443") == "http://127.0.0.1:443"


def test_check_image_returns_the_same_bytes():
    data = image_bytes("png")
    img = check_image(data, make_job().request)
    assert img.data is data
    with Image.open(io.BytesIO(img.data)) as decoded:
        assert decoded.size == (1024, 1024)


@pytest.mark.parametrize("body", [b"", b"not gzip at all"])
async def test_a_401_with_a_broken_gzip_body_is_still_a_401(body):
    result, *_ = await call(lambda m: m.post(URL, status=401, body=body,
                                             headers={"Content-Encoding": "gzip"}))
    assert isinstance(result, AuthError) and "check DIFFUSION_KEY" in result.message


def test_base64_variants_other_servers_send_decode_to_the_same_bytes():
    from imagebatch.running.client import decode_b64

    data = image_bytes("png")
    plain = base64.b64encode(data).decode()
    variants = [
        plain,
        base64.encodebytes(data).decode(),  # MIME: a line break every 76 characters
        plain.rstrip("="),  # padding left off
        base64.urlsafe_b64encode(data).decode(),
        "data:image/png;base64," + plain,
        "  " + plain + "\n",
    ]
    assert all(decode_b64(v) == data for v in variants)
    for bad in (plain[:40] + "!!" + plain[40:], plain[:40] + "*" + plain[41:], "x" * 4 + "$"):
        with pytest.raises(RetryableApiError, match="does not decode"):
            decode_b64(bad)


async def test_the_image_and_the_error_carry_the_requests_their_call_sent():
    data = image_bytes("png")

    def downloaded(m):
        m.post(URL, payload={"created": 1, "data": [{"url": "/files/x.png"}]})
        m.get(BASE + "/files/x.png", body=data)

    def download_fails(m):
        m.post(URL, payload={"created": 1, "data": [{"url": "/files/x.png"}]})
        m.get(BASE + "/files/x.png", status=500)

    image, *_ = await call(downloaded)
    assert image.requests == 2
    error, *_ = await call(download_fails)
    assert isinstance(error, RetryableApiError) and error.requests == 2
    refused, *_ = await call(lambda m: m.post(URL, status=400, payload={}))
    assert isinstance(refused, PermanentApiError) and refused.requests == 1


async def test_a_connection_refused_is_an_unreachable_error():
    from imagebatch.errors import UnreachableError

    result, *_ = await call(lambda m: m.refuse("inference.example.test", 443))
    # refused: the request never reached the wire, so it is not counted as sent
    assert isinstance(result, UnreachableError) and result.requests == 0
    assert result.message == "cannot connect to inference.example.test:443 (Connection refused)"

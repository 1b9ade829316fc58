"""Hostile responses: a tiny aiohttp server per case answers every request with something a
real service must never send, and `python -m imagebatch run` must refuse it with a clear reason,
retry as the spec says (transient: `--retries` more times), fail the job, keep its memory
bounded, and save nothing under outputs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image
from stress_helpers import Forker, app_server, cli_env, forker, scale, temp_files

from imagebatch.running.client import MAX_BODY_BYTES

pytestmark = pytest.mark.stress

RETRIES = 2
TIMEOUT = 2.0
MANIFEST = """\
version: 1
name: hostile
jobs:
  - id: gull
    prompt: "a gull over the harbour"
    output_format: png
    aspect_ratio: "21:9"
    seeds: 7
"""
WANT = (1536, 640)  # 21:9

def _encode(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 90, 160)).save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload))


def _bomb(side: int) -> bytes:
    """A few hundred bytes of valid PNG that declare side x side pixels (a decompression bomb:
    decoding it would need side*side*3 bytes; 30000 gives 2.7 GB)."""
    row = b"\0" + b"\0" * (side * 3)
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(row * 4, 9)) + _chunk(b"IEND", b""))


def _ok_json(data: bytes) -> bytes:
    return json.dumps({"created": 1, "data": [{"b64_json": base64.b64encode(data).decode(),
                                               "revised_prompt": ""}]}).encode()


Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(body: bytes, content_type: str = "application/json") -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)
    return reply


FIFTY_MB = 50 * 1024 * 1024


def _fifty_mb_json() -> bytes:
    # well-formed JSON in the API's shape: only its size gives it away
    head = b'{"created":1,"data":[{"b64_json":"'
    tail = b'","revised_prompt":""}]}'
    return head + b"A" * (FIFTY_MB - len(head) - len(tail)) + tail


async def _fifty_mb_chunked(request: web.Request) -> web.StreamResponse:
    # the same body without a Content-Length: only counting while reading can stop it
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    block = b"A" * (1024 * 1024)
    await resp.write(b'{"created":1,"data":[{"b64_json":"')
    try:
        for _ in range(50):
            await resp.write(block)
        await resp.write(b'"}]}')
    except (ConnectionError, RuntimeError):
        pass  # the client hung up, as it should
    return resp


async def _trickle(request: web.Request) -> web.StreamResponse:
    # a valid start, then one byte a second, forever
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    text = _ok_json(_encode("PNG", WANT))
    try:
        for i in range(len(text)):
            await resp.write(text[i:i + 1])
            await asyncio.sleep(1.0)
    except (ConnectionError, RuntimeError):
        pass
    return resp


#: What the compressed bombs inflate to: 2 GiB under `make soak`, 256 MiB (16 times the body
#: cap) in `make test`; either is refused at the cap, which is what the cases check.
BOMB_INFLATED = scale(2 * 1024**3, 256 * 1024**2)


def _compressed_bomb(encoding: str) -> Reply:
    # ~1 KB on the wire per MiB of JSON it inflates to, whatever the client asked for. Built
    # from one compressed MiB repeated: a full flush byte-aligns the deflate stream and resets
    # its history, so each MiB's compressed bytes are the same and may follow each other
    # (compressing the whole of it took half a minute of the suite's CPU per case).
    block = b"A" * (1024 * 1024)
    head, tail = b'{"created":1,"data":[{"b64_json":"', b'"}]}'
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; framing added below
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    repeat = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    assert packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH) == repeat
    count = (BOMB_INFLATED - len(head) - len(tail)) // len(block)
    stream = start + repeat * count + packer.compress(tail) + packer.flush()
    if encoding == "gzip":  # RFC 1952: header, deflate, CRC-32 and size of what it inflates to
        crc = zlib.crc32(head)
        for _ in range(count):
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(tail, crc)
        size = len(head) + count * len(block) + len(tail)
        body = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + stream
                + struct.pack("<II", crc, size & 0xFFFFFFFF))
    else:  # RFC 1950: header, deflate, Adler-32
        adler = zlib.adler32(head)
        for _ in range(count):
            adler = zlib.adler32(block, adler)
        body = b"\x78\xda" + stream + struct.pack(">I", zlib.adler32(tail, adler))

    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": "application/json",
                                                "Content-Encoding": encoding})
    return reply


def _gzip(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(body) + packer.flush()


def _encoded(body: bytes, encoding: str) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": "application/json",
                                                "Content-Encoding": encoding})
    return reply


def _deep_json(status: int) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=b"[" * 100_000 + b"]" * 100_000,
                            content_type="application/json")
    return reply


def _ok_with_header(name: str, value: str) -> Reply:
    body = _ok_json(_encode("PNG", WANT))

    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json", headers={name: value})
    return reply


HTML_200 = (b"<!DOCTYPE html><html><head><title>Maintenance</title></head>"
            b"<body><h1>We'll be back soon</h1></body></html>")

# case -> (reply, the reason's expected words)
CASES: dict[str, tuple[Callable[[], Reply], str]] = {
    "bomb-30000x30000": (lambda: _static(_ok_json(_bomb(30000))), r"refused"),
    "json-50MB": (lambda: _static(_fifty_mb_json()), r"over the \d+ byte cap"),
    "json-50MB-chunked": (lambda: _fifty_mb_chunked, r"over the \d+ byte cap"),
    "trickle-1-byte-a-second": (lambda: _trickle, rf"no complete response within {TIMEOUT:g} s"),
    "html-with-200": (lambda: _static(HTML_200, "text/html"), r"HTML page came back"),
    "html-with-200-as-json": (lambda: _static(HTML_200), r"HTML page came back"),
    "jpeg-when-png-asked": (lambda: _static(_ok_json(_encode("JPEG", WANT))),
                            r"image is JPEG, asked for png"),
    "wrong-size": (lambda: _static(_ok_json(_encode("PNG", (512, 512)))),
                   r"image is 512x512, asked for 1536x640"),
    # a real image of the right size with 5 MB of something else after its end: the extra
    # bytes are not the image and must not be saved as part of it
    "gzip-bomb": (lambda: _compressed_bomb("gzip"), r"over the \d+ byte cap"),
    "deflate-bomb": (lambda: _compressed_bomb("deflate"), r"over the \d+ byte cap"),
    "brotli-claimed": (lambda: _encoded(_ok_json(_encode("PNG", WANT)), "br"),
                       r"br-encoded although none was asked for"),
    "gzip-cut-short": (lambda: _encoded(_gzip(_ok_json(_encode("PNG", WANT)))[:200], "gzip"),
                       r"gzip response body is truncated"),
    "gzip-claimed-not-gzip": (lambda: _encoded(_ok_json(_encode("PNG", WANT)), "gzip"),
                              r"gzip response body does not inflate"),
    "json-nested-100000-deep": (lambda: _deep_json(200), r"not valid JSON"),
    "json-nested-100000-deep-with-500": (lambda: _deep_json(500), r"HTTP 500"),
    "png-with-trailing-bytes": (lambda: _static(_ok_json(_encode("PNG", WANT) + b"\0x" * 2**21)),
                                r"after the end of the PNG"),
}


def _counting(reply: Reply, seen: list[float]) -> Reply:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(time.monotonic())
        return await reply(request)
    return handle


@pytest.fixture(scope="module")
def commands() -> Iterator[Forker]:
    """One interpreter for the module's runs, each a forked child: its own process (exit
    status, output, peak RSS) without a fresh interpreter's imports."""
    with forker() as f:
        yield f


def _run(commands: Forker, tmp_path: Path, url: str) -> tuple[int, str, str, int]:
    """`imagebatch run` in a process of its own: (exit status, stdout, stderr, peak RSS in kB).

    The peak is VmHWM counted from the start of the command (not getrusage's ru_maxrss,
    which Linux carries over from the process it was forked or exec'd from)."""
    manifest = tmp_path / "hostile.yaml"
    manifest.write_text(MANIFEST)
    argv = ["run", str(manifest), "--out", str(tmp_path / "out"), "--retries", str(RETRIES),
            "--timeout", str(TIMEOUT), "--rpm", "0", "--json"]
    proc = commands.run(argv, cli_env(url), cwd=tmp_path, timeout=120, peak_rss=True)
    rss = re.search(r"peak_rss_kb=(\d+)", proc.stderr)
    assert rss, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr, int(rss.group(1))


@pytest.fixture(scope="module")
def baseline_rss(commands: Forker, tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of the same run against a server that answers correctly."""
    tmp = tmp_path_factory.mktemp("baseline")
    with app_server(_static(_ok_json(_encode("PNG", WANT)))) as url:
        code, _, err, rss = _run(commands, tmp, url)
    assert code == 0, err
    return rss


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_response_is_refused_retried_and_nothing_saved(
        commands: Forker, tmp_path: Path, case: str, baseline_rss: int) -> None:
    make, reason = CASES[case]
    seen: list[float] = []
    with app_server(_counting(make(), seen)) as url:
        started = time.monotonic()
        code, out, err, rss = _run(commands, tmp_path, url)
        wall = time.monotonic() - started
    assert code == 1, err  # the run finished; the job failed
    assert "Traceback" not in err
    summary = json.loads(out)
    assert (summary["failed"], summary["succeeded"]) == (1, 0)
    (failure,) = summary["failures"]
    assert re.search(reason, failure["reason"]), failure["reason"]
    assert f"gave up after {RETRIES + 1} attempts" in failure["reason"]
    assert failure["reason"] in err  # and it is said where a person reads it
    (record,) = [json.loads(x) for x in (tmp_path / "out/hostile/results.jsonl").read_text()
                 .splitlines()]
    assert (record["status"], record["error"], record["attempts"]) == \
        ("failed", failure["reason"], RETRIES + 1)
    assert len(seen) == RETRIES + 1 == summary["requests"]
    # nothing saved: no image, no temp file, no thumbnail of anything
    root = tmp_path / "out/hostile"
    assert not [p for p in (root / "images").rglob("*") if p.is_file()]
    assert not [p for p in root.glob("thumbs/**/*") if p.is_file()]
    assert not temp_files(root)
    # memory: never more than the body cap above a normal run, whatever the server sent
    grew_mb = (rss - baseline_rss) / 1024
    assert grew_mb < MAX_BODY_BYTES / 2**20 + 16, f"peak RSS grew {grew_mb:.0f} MB"
    # time: bounded by the attempts' timeouts and the backoff between them
    assert wall < 5 + (RETRIES + 1) * TIMEOUT + sum(2**i for i in range(RETRIES)), wall
    print(f"\n{case}: refused ({failure['reason']}), {len(seen)} attempts, "
          f"peak RSS +{grew_mb:.0f} MB, {wall:.1f} s")


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400", "nan", "many"])
def test_nonsense_rate_limit_headers_on_good_answers_are_ignored(commands: Forker, tmp_path: Path,
                                                                value: str) -> None:
    for name in ("x-ratelimit-remaining-requests", "x-ratelimit-limit-requests"):
        (tmp_path / name).mkdir()
        with app_server(_ok_with_header(name, value)) as url:
            code, out, err, _rss = _run(commands, tmp_path / name, url)
        assert code == 0, err
        assert json.loads(out)["succeeded"] == 1


def test_a_401_with_a_nested_body_still_stops_the_run(commands: Forker, tmp_path: Path) -> None:
    seen: list[float] = []
    with app_server(_counting(_deep_json(401), seen)) as url:
        code, _out, err, _rss = _run(commands, tmp_path, url)
    assert code == 2, err
    assert "rejected the key (401)" in err and "check DIFFUSION_KEY" in err
    assert len(seen) == 1 and "Traceback" not in err


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_a_server_that_compresses_anyway_is_still_understood(commands: Forker, tmp_path: Path,
                                                             encoding: str) -> None:
    body = _ok_json(_encode("PNG", WANT))
    wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[encoding]
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    packed = packer.compress(body) + packer.flush()
    header = "deflate" if encoding == "raw-deflate" else encoding
    asked: list[str] = []

    async def reply(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=packed, headers={"Content-Type": "application/json",
                                                  "Content-Encoding": header})

    with app_server(reply) as url:
        code, out, err, _rss = _run(commands, tmp_path, url)
    assert code == 0, err
    assert json.loads(out)["succeeded"] == 1 and asked == ["identity"]
    (image,) = [p for p in (tmp_path / "out/hostile/images").rglob("*") if p.is_file()]
    with Image.open(image) as img:
        assert (img.format, img.size) == ("PNG", WANT)

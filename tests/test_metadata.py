"""The request embedded in PNG and JPEG bytes, and read back, without re-encoding."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image
from runner_helpers import image_bytes, make_job

from imagebatch.cli import main
from imagebatch.planning.plan import canonical_json
from imagebatch.storage import metadata


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_round_trip_keeps_pixels_and_body(tmp_path, fmt):
    job = make_job(fmt=fmt, prompt="Zürich at dusk — 東京 {style}")
    raw = image_bytes(fmt)
    blob = metadata.embed(raw, job.body)
    assert metadata.extract(blob) == job.body
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(blob)
    assert canonical_json(metadata.read_request(path)) == job.body
    with Image.open(io.BytesIO(blob)) as a, Image.open(io.BytesIO(raw)) as b:
        assert a.format == b.format and a.size == b.size
        assert a.tobytes() == b.tobytes()  # spliced, not re-encoded


def test_png_chunk_is_after_ihdr_and_pillow_sees_it():
    blob = metadata.embed(image_bytes("png"), '{"prompt":"x"}')
    assert blob[12:16] == b"IHDR" and blob[37:41] == b"iTXt"
    with Image.open(io.BytesIO(blob)) as img:
        img.verify()  # CRCs of our chunk are right
    with Image.open(io.BytesIO(blob)) as img:
        assert img.text[metadata.KEYWORD] == '{"prompt":"x"}'


def test_jpeg_long_body_spans_several_comment_segments():
    body = json.dumps({"prompt": "é" * 10_000, "negative_prompt": "ß" * 10_000})
    blob = metadata.embed(image_bytes("jpeg", (64, 64)), body)
    assert blob.count(b"\xff\xfe") >= 1
    assert metadata.extract(blob) == body
    with Image.open(io.BytesIO(blob)) as img:
        img.load()


def test_not_an_image_and_no_metadata(tmp_path):
    with pytest.raises(metadata.MetadataError):
        metadata.embed(b"GIF89a....", "{}")
    plain = tmp_path / "plain.png"
    plain.write_bytes(image_bytes("png", (8, 8)))
    with pytest.raises(metadata.MetadataError, match="carries no"):
        metadata.read_request(plain)


def _png_with(chunk_type: bytes, data: bytes) -> bytes:
    """A small PNG carrying one extra chunk right after IHDR, CRC correct."""
    raw = image_bytes("png", (8, 8))
    chunk = struct.pack(">I", len(data)) + chunk_type + data + struct.pack(
        ">I", zlib.crc32(chunk_type + data))
    return raw[:33] + chunk + raw[33:]


def _itxt(text: bytes, *, compressed: bool = False) -> bytes:
    flag = b"\x01\x00" if compressed else b"\x00\x00"
    return _png_with(b"iTXt", metadata.KEYWORD.encode() + b"\x00" + flag + b"\x00\x00" + text)


def _jpeg_comment(payload: bytes) -> bytes:
    raw = image_bytes("jpeg", (8, 8))
    body = b"imagebatch-request:" + payload
    return raw[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + raw[2:]


HOSTILE = {
    "bad-zlib.png": (_itxt(b"not zlib data", compressed=True), "compressed"),
    "bad-utf8.png": (_itxt(b"\xff\xfe{}"), "UTF-8"),
    "bad-utf8.jpg": (_jpeg_comment(b"\xff\xfe{}"), "UTF-8"),
    "deep.png": (_itxt(b"[" * 100_000 + b"]" * 100_000), "nested"),
    "deep-object.png": (_itxt(b'{"a":' + b"[" * 500 + b"]" * 500 + b"}"), "nested"),
    "surrogate.png": (_itxt(b'{"prompt":"\\ud800"}'), "Unicode"),
    "nan.png": (_itxt(b'{"seed":NaN}'), "not JSON"),
    "bomb.png": (_itxt(zlib.compress(b'{"a":"' + b"a" * (4 << 20) + b'"}', 9),
                       compressed=True), "larger than"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_malformed_embedded_request_is_a_metadata_error(tmp_path, capsys, name):
    data, words = HOSTILE[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(metadata.MetadataError, match=words):
        metadata.read_request(path)
    assert main(["show", str(path)]) == 2  # one line, exit 2, no traceback
    err = capsys.readouterr().err
    assert err.startswith("imagebatch: ") and err.count("\n") == 1 and words in err


def test_compressed_request_is_read_within_a_bound(monkeypatch):
    body = '{"prompt":"' + "x" * 5000 + '"}'
    assert metadata.extract(_itxt(zlib.compress(body.encode()), compressed=True)) == body
    inflated = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self) -> None:
            self._d = real()

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            assert 0 < max_length <= metadata.MAX_REQUEST_BYTES + 1  # never unbounded
            out = self._d.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name: str):
            return getattr(self._d, name)

    monkeypatch.setattr(metadata.zlib, "decompressobj", Spy)
    bomb = zlib.compress(b"a" * (8 << 20), 9)
    with pytest.raises(metadata.MetadataError, match="larger than"):
        metadata.extract(_itxt(bomb, compressed=True))
    assert sum(inflated) <= metadata.MAX_REQUEST_BYTES + 1

"""The request embedded in PNG and JPEG bytes, and read back, without re-encoding."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from runner_helpers import image_bytes, make_job

from pipeline import metadata
from pipeline.plan import canonical_json


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

"""The request embedded in an image's bytes, and read back (`imagebatch show`).

PNG: an iTXt chunk inserted right after IHDR; JPEG: COM segment(s) right after SOI.
Both are spliced into the encoded bytes, never re-encoded, so pixels stay exactly as served.
The text is the request body exactly as sent (canonical JSON): no key, no URL.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

#: The PNG text keyword / JPEG comment prefix that marks our metadata.
KEYWORD = "imagebatch-request"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_PREFIX = (KEYWORD + ":").encode()
_JPEG_MAX_PAYLOAD = 65533 - len(_JPEG_PREFIX)  # a COM segment holds at most 65533 bytes


class MetadataError(ValueError):
    """The bytes are not a PNG or JPEG we can embed into or read from."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def embed(data: bytes, body: str) -> bytes:
    """Return `data` (PNG or JPEG) with the request `body` embedded; raises MetadataError."""
    text = body.encode("utf-8")
    if data.startswith(PNG_SIGNATURE):
        # IHDR is always the first chunk: 8 signature + 4 length + 4 type + 13 data + 4 crc.
        end_ihdr = 8 + 8 + 13 + 4
        if data[12:16] != b"IHDR" or len(data) < end_ihdr:
            raise MetadataError("PNG without IHDR first")
        # iTXt: keyword NUL, compression flag 0, method 0, language NUL, translated NUL, UTF-8.
        chunk = _png_chunk(b"iTXt", KEYWORD.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text)
        return data[:end_ihdr] + chunk + data[end_ihdr:]
    if data.startswith(b"\xff\xd8"):
        segments = []
        for i in range(0, max(len(text), 1), _JPEG_MAX_PAYLOAD):
            payload = _JPEG_PREFIX + text[i : i + _JPEG_MAX_PAYLOAD]
            segments.append(b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload)
        return data[:2] + b"".join(segments) + data[2:]
    raise MetadataError("not a PNG or JPEG")


def _png_text(data: bytes) -> str | None:
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"iTXt":
            keyword, _, rest = chunk.partition(b"\x00")
            if keyword == KEYWORD.encode("latin-1") and len(rest) >= 2:
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\x00")
                _translated, _, text = rest.partition(b"\x00")
                return (zlib.decompress(text) if compressed else text).decode("utf-8")
        elif kind == b"tEXt":
            keyword, _, text = chunk.partition(b"\x00")
            if keyword == KEYWORD.encode("latin-1"):
                return text.decode("latin-1")
        if kind in (b"IDAT", b"IEND"):
            break  # text we write always precedes the image data
        pos += 12 + length
    return None


def _jpeg_text(data: bytes) -> str | None:
    pos, parts = 2, []
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more header segments
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xFE:
            payload = data[pos + 4 : pos + 2 + length]
            if payload.startswith(_JPEG_PREFIX):
                parts.append(payload[len(_JPEG_PREFIX) :])
        pos += 2 + length
    return b"".join(parts).decode("utf-8") if parts else None


def extract(data: bytes) -> str | None:
    """The embedded request body text, or None when the image carries none."""
    if data.startswith(PNG_SIGNATURE):
        return _png_text(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_text(data)
    raise MetadataError("not a PNG or JPEG")


def read_request(path: Path) -> dict[str, Any]:
    """The request embedded in the image at `path`; raises MetadataError when there is none."""
    data = Path(path).read_bytes()
    text = extract(data)
    if text is None:
        raise MetadataError(f"{path}: carries no imagebatch request")
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise MetadataError(f"{path}: embedded request is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MetadataError(f"{path}: embedded request is not a JSON object")
    return body

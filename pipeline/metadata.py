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

from pipeline.errors import ImagebatchError

#: The PNG text keyword / JPEG comment prefix that marks our metadata.
KEYWORD = "imagebatch-request"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_PREFIX = (KEYWORD + ":").encode()
_JPEG_MAX_PAYLOAD = 65533 - len(_JPEG_PREFIX)  # a COM segment holds at most 65533 bytes
#: Largest embedded request read back. A real body (prompts of at most 10,000 characters) is
#: a few tens of KB; the bound keeps a crafted compressed chunk from inflating to gigabytes.
MAX_REQUEST_BYTES = 1 << 20
#: Deepest nesting of arrays/objects accepted in an embedded request. Real bodies are flat;
#: the bound keeps parsing and printing a crafted one clear of Python's recursion limit.
MAX_REQUEST_DEPTH = 32


class MetadataError(ImagebatchError, ValueError):
    """The bytes are not a PNG or JPEG we can embed into or read from (still a ValueError)."""


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
                return _decode(_inflate(text) if compressed else text)
        elif kind == b"tEXt":
            keyword, _, text = chunk.partition(b"\x00")
            if keyword == KEYWORD.encode("latin-1"):
                return _bounded(text).decode("latin-1")
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
    return _decode(b"".join(parts)) if parts else None


def _bounded(text: bytes) -> bytes:
    if len(text) > MAX_REQUEST_BYTES:
        raise MetadataError(f"embedded request is larger than {MAX_REQUEST_BYTES} bytes")
    return text


def _inflate(data: bytes) -> bytes:
    """zlib-inflate at most MAX_REQUEST_BYTES (+1 to tell "too large" from "exactly")."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_REQUEST_BYTES + 1)
    except zlib.error as exc:
        raise MetadataError(f"embedded request is not valid compressed data ({exc})") from None
    _bounded(text)
    if not inflater.eof:
        raise MetadataError("embedded request is truncated compressed data")
    return text


def _decode(text: bytes) -> str:
    try:
        return _bounded(text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"embedded request is not UTF-8 text ({exc.reason})") from None


def extract(data: bytes) -> str | None:
    """The embedded request body text, or None when there is none; MetadataError if malformed."""
    if data.startswith(PNG_SIGNATURE):
        return _png_text(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_text(data)
    raise MetadataError("not a PNG or JPEG")


def read_request(path: Path) -> dict[str, Any]:
    """The request embedded in the image at `path`; raises MetadataError when there is none."""
    data = Path(path).read_bytes()
    try:
        text = extract(data)
    except MetadataError as exc:
        raise MetadataError(f"{path}: {exc}") from None
    if text is None:
        raise MetadataError(f"{path}: carries no imagebatch request")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise MetadataError(f"{path}: embedded request is nested too deeply") from None
    except ValueError as exc:
        raise MetadataError(f"{path}: embedded request is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MetadataError(f"{path}: embedded request is not a JSON object")
    problem = _check_value(body)
    if problem:
        raise MetadataError(f"{path}: embedded request {problem}")
    return body


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: a body holding them could not be sent again as printed.
    raise ValueError(f"{name} is not a JSON value")


def _check_value(body: Any) -> str | None:
    """Why `body` could not be printed back as UTF-8 JSON, or None. Walks without recursion."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                # json.loads lets "\\ud800" through; printing it as UTF-8 would fail
                return "holds text that is not valid Unicode (a lone surrogate)"
        elif isinstance(value, (dict, list)):
            if depth > MAX_REQUEST_DEPTH:
                return f"is nested too deeply (more than {MAX_REQUEST_DEPTH} levels)"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None

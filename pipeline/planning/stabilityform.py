"""A Stability request as sent: its multipart/form-data body, byte for byte, and the rules
its input image must follow.

The client sends `encode(...)`; planning measures the very same body with `encoded_size(...)`
(without building it), so a request over Stability's 10 MiB is refused at its manifest
location before anything is sent. An input image is judged from its header alone: no pixel
is decoded, so a 16,384-pixel side costs nothing to check.
"""

from __future__ import annotations

import io
import json
import secrets
import struct
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from . import apispec

#: Request fields that are not form fields: `provider` and `model` name the request (the
#: endpoint is the model), `image` is its SHA-256 (the file itself goes as the file part).
NOT_SENT = frozenset({"provider", "model", "image"})
#: Every boundary has this many characters, so a body's size is known before it is made.
BOUNDARY_CHARS = 32
_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
#: How to make an input image small enough to send, for messages.
SHRINK = "fewer pixels, or JPEG or WebP at a lower quality"


def new_boundary() -> str:
    """A random multipart boundary of BOUNDARY_CHARS characters."""
    return secrets.token_hex(BOUNDARY_CHARS // 2)


def content_type(boundary: str) -> str:
    """The Content-Type header of a body encoded with `boundary`."""
    return f"multipart/form-data; boundary={boundary}"


def input_format(data: bytes) -> str:
    """png, jpeg or webp from an image's first bytes; "" for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def _frame(request: Mapping[str, Any], boundary: str, filename: str | None,
           image_format: str) -> tuple[bytes, bytes]:
    """The body's bytes before the input image and after it (all of it without one).

    Each field but NOT_SENT is a text part (UTF-8; numbers as JSON writes them), in name
    order; the input image is the last part, named by its file's name (percent-encoded).
    """
    out = bytearray()
    for name in sorted(request):
        if name in NOT_SENT:
            continue
        value = request[name]
        text = value if isinstance(value, str) else json.dumps(value)
        out += (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f'Content-Disposition: form-data; name="{name}"\r\n\r\n').encode("ascii")
        out += text.encode("utf-8") + b"\r\n"
    tail = f"--{boundary}--\r\n".encode("ascii")
    if filename is None:
        return bytes(out), tail
    out += (f"--{boundary}\r\nContent-Type: "
            f"{_TYPES.get(image_format, 'application/octet-stream')}\r\n"
            f'Content-Disposition: form-data; name="image"; '
            f'filename="{quote(filename, safe="")}"\r\n\r\n').encode("ascii")
    return bytes(out), b"\r\n" + tail


def encode(request: Mapping[str, Any], boundary: str, image: bytes | None = None,
           filename: str = "image") -> bytes:
    """The multipart/form-data body of `request` (and its input image), as sent."""
    head, tail = _frame(request, boundary, None if image is None else filename,
                        input_format(image or b""))
    return head + tail if image is None else head + image + tail


def encoded_size(request: Mapping[str, Any], image_size: int | None = None,
                 filename: str = "image", image_format: str = "") -> int:
    """The length of `encode(request, ...)` with an input image of `image_size` bytes in
    `image_format` (None: no image), computed without the image."""
    head, tail = _frame(request, "-" * BOUNDARY_CHARS,
                        None if image_size is None else filename, image_format)
    return len(head) + (image_size or 0) + len(tail)


def input_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG or WebP image, from its header; None for anything else.

    Read by the format's own reader, never through Image.open, whose decompression-bomb
    guard refuses sizes Ultra takes (it protects decoding, and no pixel is decoded here).
    """
    from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

    readers: dict[str, Callable[[io.BytesIO], Image.Image]] = {
        "png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile,
        "webp": WebPImagePlugin.WebPImageFile}
    reader = readers.get(input_format(data))
    if reader is None:
        return None
    try:
        with reader(io.BytesIO(data)) as img:
            w, h = img.size
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        return None
    return int(w), int(h)


def input_image_problem(data: bytes) -> str | None:
    """Why `data` cannot be Ultra's input image, or None: a PNG, JPEG or WebP image with
    each side from 64 to 16,384 pixels (so at least 4,096 pixels in all). Ultra has no upper
    pixel count: the 9,437,184-pixel cap is the edit endpoints'."""
    size = input_image_size(data)
    if size is None:
        return "is not a PNG, JPEG or WebP image"
    w, h = size
    low, high = apispec.STABILITY_MIN_INPUT_SIDE, apispec.STABILITY_MAX_INPUT_SIDE
    if min(w, h) < low or max(w, h) > high:
        return f"is {w}x{h}: each side needs {low} to {high:,} pixels"
    return None

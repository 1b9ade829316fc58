"""Where an image's bytes are checked before they are kept: format, integrity, pixel
limit, and size against the request, by its provider's size rule.

Anything that lies is a RetryableApiError (the client retries it); an image of another
size than asked but about one megapixel is the provider's choice: kept and flagged.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import RetryableApiError
from ..planning import apispec
from ..providers import default
from ..providers.base import Provider

#: Twice the largest API size: anything declaring more is refused before decoding.
MAX_PIXELS = 2 * max(w * h for w, h in (map(int, s.split("x")) for s in apispec.SIZES))
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
#: Pixel counts of an image the model could have chosen to make: about one megapixel, as all
#: its sizes are (two thirds of the smallest to half again the largest). An image of another
#: size than asked but in this range is the provider's answer, which the same request and seed
#: would get again: it is kept and flagged, not retried (a retry would pay for it twice). Far
#: outside it (a thumbnail, a placeholder) it is a body that lies, and retried.
_API_PIXELS = sorted(w * h for w, h in (map(int, s.split("x")) for s in apispec.SIZES))
PLAUSIBLE_PIXELS = (_API_PIXELS[0] * 2 // 3, _API_PIXELS[-1] * 3 // 2)
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every PNG
@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One checked image as served: the encoded bytes, its format and size, `created`, and
    the HTTP requests it took (a url-format answer costs a download beside the POST)."""

    data: bytes
    format: str  # png | jpeg
    width: int
    height: int
    created: int | None = None
    requests: int = 1
    seed: int | None = None  # the seed the provider says it used (Stability's `seed` header)
    # What is off about a kept image: another size than asked, within PLAUSIBLE_PIXELS
    flag: str | None = None


def check_image(data: bytes, request: Mapping[str, Any],
                provider: Provider | None = None) -> GeneratedImage:
    """Open `data` under a pixel limit, check integrity, format, and size against `request`
    by `provider`'s size rule (None: the default provider's)."""
    provider = provider or default()
    want_fmt = apispec.image_format(dict(request))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))
        with img:
            fmt = _PIL_FORMATS.get(img.format or "", "")
            w, h = img.size
            # Declared size first: a bomb is refused before a single pixel is decoded.
            if w * h > MAX_PIXELS:
                raise RetryableApiError(f"image declares {w}x{h} pixels: refused", kind="bad_image")
            if fmt != want_fmt:
                raise RetryableApiError(
                    f"image is {img.format}, asked for {want_fmt}", kind="wrong_format"
                )
            wrong = provider.size_problem(w, h, request)
            if wrong and not PLAUSIBLE_PIXELS[0] <= w * h <= PLAUSIBLE_PIXELS[1]:
                raise RetryableApiError(wrong, kind="wrong_size")
            if fmt == "webp":
                img.load()  # every chunk decoded: a truncated WebP fails here
            elif fmt == "png":
                img.verify()  # walks every chunk to IEND checking CRCs; no pixel decoding
                # Bytes after IEND are not part of the image (decoders ignore them) but would
                # be saved with it: a server padding an image with megabytes of something else
                # must not get them written under outputs.
                end = data.find(_PNG_IEND)
                if end < 0:
                    raise RetryableApiError("PNG does not end with an IEND chunk", kind="truncated")
                extra = len(data) - end - len(_PNG_IEND)
                if extra:
                    raise RetryableApiError(f"{extra} bytes after the end of the PNG",
                                            kind="trailing")
            else:
                if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    raise RetryableApiError("JPEG is truncated (no end marker)", kind="truncated")
                # Decode at 1/8 scale: every entropy-coded byte is read, little IDCT work.
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except RetryableApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise RetryableApiError(f"image refused: {exc}", kind="bad_image") from None
    except UnidentifiedImageError:
        raise RetryableApiError("response bytes are not a PNG, JPEG or WebP image",
                                kind="not_image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise RetryableApiError(f"image is corrupt or truncated ({exc})",
                                kind="truncated") from None
    return GeneratedImage(data=data, format=fmt, width=w, height=h, flag=wrong)


def decode_b64(text: str) -> bytes:
    """base64 bytes; RetryableApiError when it does not decode.

    Strict RFC 4648 first (what the API sends). Failing that, the harmless variants other
    servers send are accepted: line breaks (MIME), missing padding, the URL-safe alphabet,
    a `data:image/...;base64,` prefix. Any other character still fails; what decodes is
    checked as an image afterwards either way.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    head, comma, _rest = text[:100].partition(",")
    if comma and head.strip().startswith("data:") and head.endswith(";base64"):
        text = text[len(head) + 1:]
    text = "".join(text.split()).translate(_URLSAFE).rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RetryableApiError("base64 image data does not decode", kind="bad_base64") from None


_URLSAFE = str.maketrans("-_", "+/")

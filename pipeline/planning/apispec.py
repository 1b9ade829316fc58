"""The image API's rules (api.md), in one place for the manifest, the server and the client."""

from __future__ import annotations

from typing import Any

ENDPOINT = "/v1/images/generations"
DEFAULT_MODEL = "stable-image-ultra"

#: aspect_ratio -> size, the nine ratios at about one megapixel.
ASPECT_SIZES: dict[str, str] = {
    "16:9": "1344x768",
    "1:1": "1024x1024",
    "21:9": "1536x640",
    "2:3": "832x1216",
    "3:2": "1216x832",
    "4:5": "896x1088",
    "5:4": "1088x896",
    "9:16": "768x1344",
    "9:21": "640x1536",
}
SIZES: tuple[str, ...] = tuple(ASPECT_SIZES.values())
SIZE_ASPECTS: dict[str, str] = {v: k for k, v in ASPECT_SIZES.items()}
ASPECT_RATIOS: tuple[str, ...] = tuple(ASPECT_SIZES)
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg")
RESPONSE_FORMATS: tuple[str, ...] = ("b64_json", "base64", "url")
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 4_294_967_295
DEFAULT_ASPECT = "1:1"
DEFAULT_FORMAT = "png"

#: Request fields a manifest may set (besides `model`, which is top-level).
REQUEST_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "aspect_ratio", "size", "output_format", "seed",
)


def pixel_size(request: dict[str, Any]) -> tuple[int, int]:
    """The (width, height) an image made for this request must have: `size` wins, else the ratio."""
    size = request.get("size") or ASPECT_SIZES[request.get("aspect_ratio") or DEFAULT_ASPECT]
    w, h = size.split("x")
    return int(w), int(h)


def image_format(request: dict[str, Any]) -> str:
    """The output format of a request: 'png' or 'jpeg'."""
    return request.get("output_format") or DEFAULT_FORMAT

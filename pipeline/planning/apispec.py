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


# -- providers ---------------------------------------------------------------------------
# The same model is sold by two providers with two request shapes. "heroku" is the API above
# (JSON in, base64 out); "stability" is Stability AI's own (multipart form in, image bytes
# out). A backend is a provider plus its URL and key.

HEROKU = "heroku"
STABILITY = "stability"
PROVIDERS: tuple[str, ...] = (HEROKU, STABILITY)
#: Stability AI's endpoint for Stable Image Ultra, and its public base URL.
STABILITY_ENDPOINT = "/v2beta/stable-image/generate/ultra"
STABILITY_BASE_URL = "https://api.stability.ai"
STABILITY_OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")
STABILITY_MAX_SEED = 4_294_967_294  # one less than Heroku's
#: Stability's rate limit: 150 requests in 10 s, beyond which every request is refused for
#: 60 s. Paced at 600 a minute (100 in any 10 s: well under the limit, bursts included).
STABILITY_LIMIT = 150
STABILITY_WINDOW = 10.0
STABILITY_LOCKOUT = 60.0
STABILITY_DEFAULT_RPM = 600
#: Ultra's input image for image-to-image: each side from 64 to 16,384 pixels (so at least
#: 4,096 pixels in all), with no upper pixel count (the 9,437,184-pixel cap belongs to the
#: edit endpoints). Others are refused before sending.
STABILITY_MIN_INPUT_SIDE = 64
STABILITY_MAX_INPUT_SIDE = 16_384
#: The largest request Stability takes: the whole multipart body, input image included
#: ("payloads cannot be larger than 10MiB"; 413 payload_too_large beyond).
STABILITY_MAX_REQUEST_BYTES = 10 * 1024 * 1024
INPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")
#: Every output format any provider makes: what a manifest may ask for before the provider
#: check narrows it.
ALL_OUTPUT_FORMATS: tuple[str, ...] = STABILITY_OUTPUT_FORMATS

#: Manifest request fields each provider has. A manifest setting a field its provider lacks
#: is refused before sending, at the field's location.
PROVIDER_FIELDS: dict[str, frozenset[str]] = {
    HEROKU: frozenset({"prompt", "negative_prompt", "aspect_ratio", "size", "output_format",
                       "seed"}),
    STABILITY: frozenset({"prompt", "negative_prompt", "aspect_ratio", "output_format", "seed",
                          "image", "strength"}),
}
PROVIDER_FORMATS: dict[str, tuple[str, ...]] = {
    HEROKU: OUTPUT_FORMATS, STABILITY: STABILITY_OUTPUT_FORMATS,
}
PROVIDER_MAX_SEED: dict[str, int] = {HEROKU: MAX_SEED, STABILITY: STABILITY_MAX_SEED}


def endpoint(provider: str) -> str:
    """The path a provider's generation requests go to, below its base URL."""
    return STABILITY_ENDPOINT if provider == STABILITY else ENDPOINT


def extension(output_format: str | None) -> str:
    """The file extension of an output format: png, jpg or webp."""
    return {"jpeg": "jpg", "webp": "webp"}.get(output_format or DEFAULT_FORMAT, "png")

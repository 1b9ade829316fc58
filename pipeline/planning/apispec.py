"""The image API's rules (api.md), in one place for the manifest, the server and the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

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
# The same model is sold by several providers, each with its own request shape; each is one
# module under pipeline/providers/. Planning sits below them and knows a provider only
# through the Protocol below; the constants that follow are Stability AI's API facts, which
# the embedded server's fake (service/) reads as well as its provider module.

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


class Provider(Protocol):
    """What planning needs of a provider (pipeline/providers/base.py's class has it all):
    the manifest fields, output formats and seeds it takes, the body a job key hashes, and
    the size of a request as sent."""

    @property
    def name(self) -> str:
        """The provider's name, as `{PREFIX}_PROVIDER` names it and messages say it."""
        ...

    @property
    def fields(self) -> frozenset[str]:
        """The manifest request fields it takes; a manifest setting another is refused."""
        ...

    @property
    def output_formats(self) -> tuple[str, ...]:
        """The output formats it makes."""
        ...

    @property
    def max_seed(self) -> int:
        """The largest seed it takes."""
        ...

    def key_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The body a job's key is the hash of, for this provider (see docs/providers.md)."""
        ...

    def oversize(self, request: dict[str, Any], image_size: int | None, filename: str,
                 image_format: str) -> str | None:
        """Why `request` (with an input image of `image_size` bytes, None: without one) is
        too large to send as a whole, or None."""
        ...


class Providers(Protocol):
    """What the folders below providers/ ask of its registry (installed by
    `imagebatch.providers` when the package is imported): the default provider, and each
    environment prefix's choice."""

    def default(self) -> Provider:
        """The provider planned for when a caller names none (e.g. a tool or a test)."""
        ...

    def chosen(self, env: Mapping[str, str], prefixes: Sequence[str]) -> tuple[Provider, ...]:
        """The providers of the prefixes, each once, in the order first named."""
        ...

    def backends(self, env: Mapping[str, str], prefixes: Sequence[str],
                 local: bool) -> dict[str, str]:
        """Prefix -> the backend name `run` would record for it."""
        ...


_installed: list[Providers] = []


def install(registry: Providers) -> None:
    """Make `registry` the one the planning and storage folders ask (done once, by
    imagebatch.providers, which sits above them)."""
    _installed[:] = [registry]


def registry() -> Providers:
    """The installed provider registry."""
    if not _installed:
        raise RuntimeError("no provider registry installed: import imagebatch.providers")
    return _installed[0]


def default_provider() -> Provider:
    """The provider planned for when none is named."""
    return registry().default()


def extension(output_format: str | None) -> str:
    """The file extension of an output format: png, jpg or webp."""
    return {"jpeg": "jpg", "webp": "webp"}.get(output_format or DEFAULT_FORMAT, "png")

"""Stability AI's own API: a multipart form in, the image's bytes out.

`POST {URL}/v2beta/stable-image/generate/ultra`, `Authorization: Bearer sk-...`, always
`multipart/form-data` (stabilityform.py builds it byte for byte, the very body planning
measured); the answer is the image's bytes with `finish-reason` and `seed` headers
(`Accept: image/*`), or `{"image", "finish_reason", "seed"}` as JSON. A prefix names it
with `{PREFIX}_PROVIDER=stability`, a URL on stability.ai, or (for DIFFUSION and STABILITY
alone) `STABILITY_API_KEY` with none of the prefix's own variables set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from .. import version
from ..errors import (
    ApiError,
    AuthError,
    ConfigError,
    PermanentApiError,
    RetryableApiError,
    printable,
)
from ..planning import apispec, stabilityform
from ..planning.plan import Job
from .base import Answer, Outgoing, Provider, json_doc, seed_of

#: Stability AI's own name for its key, read for a Stability prefix without a key of its own.
KEY_VARIABLE = "STABILITY_API_KEY"
#: The prefixes that `STABILITY_API_KEY` alone sends to Stability's API.
IMPLIED_PREFIXES = ("DIFFUSION", "STABILITY")
#: Stability's finish-reason for an image its moderation withheld (still a 200).
CONTENT_FILTERED = "CONTENT_FILTERED"
#: How far (relative) a Stability image's aspect may be from the ratio asked: its sizes are
#: "about one megapixel" at the ratio, not a documented table like Heroku's.
ASPECT_TOLERANCE = 0.03
#: The fastest a Stability member is ever paced, --rpm or not: 140 starts in any 10 s, under
#: its 150, since one over costs a 60 s lockout of every request.
MAX_RPM = 840.0


@functools.cache
def client_headers() -> dict[str, str]:
    """Sent on every Stability request: Stability asks clients to name themselves and their
    version so that it can reach their users about moderation (its API's optional headers).
    Looked up at the first request, not at import: reading the installed version loads
    importlib.metadata, a tenth of the start-up of every command that never sends one."""
    return {"stability-client-id": "imagebatch", "stability-client-version": version()}


class Stability(Provider):
    """Stability AI's `/v2beta/stable-image/generate/ultra`."""

    name = "stability"
    fields = frozenset({"prompt", "negative_prompt", "aspect_ratio", "output_format", "seed",
                        "image", "strength"})
    output_formats = apispec.STABILITY_OUTPUT_FORMATS
    max_seed = apispec.STABILITY_MAX_SEED
    endpoint = apispec.STABILITY_ENDPOINT
    url_tails = (apispec.STABILITY_ENDPOINT, "/v2beta")
    hosts = ("stability.ai",)
    key_variables = (KEY_VARIABLE,)

    # -- the environment ------------------------------------------------------------------

    def implied(self, env: Mapping[str, str], prefix: str) -> bool:
        """`STABILITY_API_KEY` alone says "the Stability API" for DIFFUSION and STABILITY."""
        own = any((env.get(f"{prefix}_{n}") or "").strip() for n in ("URL", "KEY", "PROVIDER"))
        return (prefix in IMPLIED_PREFIXES and not own
                and bool((env.get(KEY_VARIABLE) or "").strip()))

    def default_url(self, env: Mapping[str, str], prefix: str, key: str) -> str:
        """Stability's public base URL once there is a key; the embedded server without."""
        return apispec.STABILITY_BASE_URL if key else ""

    def how_key(self, prefix: str) -> str:
        """How a user sets a Stability key."""
        return (f"export {prefix}_KEY=sk-... (your Stability AI API key; "
                f"{KEY_VARIABLE} is read too)")

    def how_url(self, prefix: str) -> str:
        """How a user sets a Stability URL."""
        return f"export {prefix}_URL={apispec.STABILITY_BASE_URL}"

    def check_model(self, prefix: str, model: str) -> None:
        """The endpoint is the model: /generate/ultra serves Stable Image Ultra alone."""
        if model != apispec.DEFAULT_MODEL:
            raise ConfigError(f"{prefix}_MODEL_ID is {model[:60]!r}, but the stability "
                              f"provider's {apispec.STABILITY_ENDPOINT} serves "
                              f"{apispec.DEFAULT_MODEL} only")

    def note(self, prefix: str, url: str, key_name: str | None) -> str:
        """A paid API implied by STABILITY_API_KEY alone, where the embedded server would
        otherwise have been used."""
        if key_name != KEY_VARIABLE:
            return ""
        return (f"{prefix}: sending to {url} with {KEY_VARIABLE} "
                f"(Stability AI's API); --local uses the embedded server")

    # -- the request ----------------------------------------------------------------------

    def key_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The form's fields as JSON plus `provider` (so the same manifest sent to Heroku
        makes another key) and `model` (what the endpoint serves); neither is sent. An input
        image is in it by its SHA-256 (`image`: "sha256:...")."""
        return {**request, "provider": self.name}

    def oversize(self, request: dict[str, Any], image_size: int | None, filename: str,
                 image_format: str) -> str | None:
        """The multipart body as sent, over Stability's 10 MiB."""
        size = stabilityform.encoded_size(request, image_size, filename, image_format)
        if size <= apispec.STABILITY_MAX_REQUEST_BYTES:
            return None
        return (f"the request is {size:,} bytes as sent, over the "
                f"{apispec.STABILITY_MAX_REQUEST_BYTES:,} (10 MiB) Stability takes in one "
                "request, input image included")

    def request(self, job: Job, base_url: str, key: str, accept: str) -> Outgoing:
        """The multipart form (read from disk for an input image: call it off the loop)."""
        form, form_type = stability_form(job)
        return Outgoing(base_url + self.endpoint, form,
                        {"Authorization": f"Bearer {key}", "Accept": accept,
                         "Content-Type": form_type, **client_headers()})

    # -- the answer -----------------------------------------------------------------------

    def answer(self, raw: bytes, content_type: str, headers: Mapping[str, str]) -> Answer:
        """The image's bytes with `finish-reason` and `seed` headers, or its JSON."""
        if "json" in content_type:
            b64, reason, seed = parse_json(raw)
            check_finish(reason)
            return Answer(b64=b64, seed=seed)
        check_finish(headers.get("finish-reason"))
        seed = seed_of(headers.get("seed"))
        if "html" in content_type:
            raise RetryableApiError("an HTML page came back instead of an image",
                                    status=200, kind="html")
        return Answer(data=raw, seed=seed)

    def size_problem(self, width: int, height: int, request: Mapping[str, Any]) -> str | None:
        """By shape: the ratio asked within ASPECT_TOLERANCE; an image-to-image answer
        keeps its input's shape, so only its pixel limit applies."""
        return aspect_problem(width, height, request)

    # -- statuses -------------------------------------------------------------------------

    def pacing_headers(self, headers: Mapping[str, str], status: int) -> Mapping[str, str]:
        """A 429's headers with the 60 s lockout its documentation promises, when it sends
        no Retry-After of its own (a request sooner would only extend it)."""
        if status != 429 or headers.get("Retry-After") is not None:
            return headers
        from multidict import CIMultiDict  # noqa: PLC0415 - only on a 429: aiohttp's, loaded by then

        out = CIMultiDict(headers)  # header names stay case-insensitive, as the pacer reads
        out["Retry-After"] = f"{apispec.STABILITY_LOCKOUT:g}"
        return out

    def error_message(self, raw: bytes, headers: Mapping[str, str]) -> str | None:
        """`{"id", "name", "errors": [...]}` as `name: error; error`."""
        try:
            doc = json.loads(raw[:65536])
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            said = [e for e in doc["errors"] if isinstance(e, str)][:10]
            name = doc.get("name") if isinstance(doc.get("name"), str) else None
            text = "; ".join(said)
            found = f"{name}: {text}" if name and text else (text or name or "")
            if found:
                return printable(" ".join(found[:2000].split()))[:500]
        return super().error_message(raw, headers)

    def status_error(self, status: int, raw: bytes, headers: Mapping[str, str],
                     key_variable: str, retry_after: float | None) -> ApiError:
        """402 is the key's (out of credits), 403 the job's (moderation), a 429 without a
        Retry-After the 60 s lockout."""
        message = self.error_message(raw, headers)
        said = f": {message}" if message else ""
        if status == 402:
            # payment_required: the key's account is out of credits. Like a 401 it is the
            # key's problem, not the job's: every other job would get it too.
            return AuthError(
                f"the service refused the key: its account is out of credits (402{said}): "
                f"add credits, or check {key_variable}", status=status, kind="payment")
        if status == 403:
            # content_moderation flagging the prompt, not a refused key: this job fails,
            # the member stays.
            return PermanentApiError(message or f"HTTP {status}", status=status,
                                     kind="moderation")
        if status == 429 and retry_after is None:
            retry_after = apispec.STABILITY_LOCKOUT  # its 429 is a 60 s lockout
        return super().status_error(status, raw, headers, key_variable, retry_after)

    # -- pacing ---------------------------------------------------------------------------

    def pace(self, asked: float | None, default: float | None, auto: bool,
             local: bool) -> tuple[float | None, bool]:
        """--rpm capped at MAX_RPM, else its default (it advertises no limit in headers);
        the embedded server is paced only when asked."""
        if asked is not None:
            return min(asked, MAX_RPM), False
        if local:
            return None, False
        return float(apispec.STABILITY_DEFAULT_RPM), False


def aspect_problem(width: int, height: int, request: Mapping[str, Any]) -> str | None:
    """Why an image is not of the ratio asked (within ASPECT_TOLERANCE), or None; an
    image-to-image answer keeps its input's shape, so any shape is."""
    if request.get("image"):
        return None
    ratio = str(request.get("aspect_ratio") or apispec.DEFAULT_ASPECT)
    rw, rh = (int(x) for x in ratio.split(":"))
    if abs((width / height) / (rw / rh) - 1) > ASPECT_TOLERANCE:
        return f"image is {width}x{height}, not the {ratio} asked for"
    return None


def stability_form(job: Job) -> tuple[bytes, str]:
    """The multipart/form-data body of a Stability request (always multipart, file or not)
    and its Content-Type: stabilityform.encode's bytes, the very body planning measured.

    An input image is read now and checked against the SHA-256 its key was made from (a
    file changed since planning would make an image under the wrong key: refused). A body
    over Stability's 10 MiB is refused unsent (planning refuses it first; this is for jobs
    that did not come through it).
    """
    request = job.request
    image: bytes | None = None
    if request.get("image"):
        if job.image is None:
            raise PermanentApiError("image-to-image job without its input image file",
                                    kind="input_image")
        try:
            with open(job.image, "rb") as fh:
                # a file that cannot fit is not read whole to find out
                size = os.fstat(fh.fileno()).st_size
                if size > apispec.STABILITY_MAX_REQUEST_BYTES:
                    raise _too_large(f"the input image {job.image} is {size:,} bytes")
                image = fh.read()
        except OSError as exc:
            raise PermanentApiError(f"cannot read the input image {job.image}: "
                                    f"{exc.strerror or exc}", kind="input_image") from None
        if "sha256:" + hashlib.sha256(image).hexdigest() != request["image"]:
            raise PermanentApiError(f"the input image {job.image} changed since the plan was "
                                    "made; run again to plan it anew", kind="input_image")
    boundary = stabilityform.new_boundary()
    body = stabilityform.encode(request, boundary, image,
                                os.path.basename(job.image) if job.image else "image")
    if len(body) > apispec.STABILITY_MAX_REQUEST_BYTES:
        raise _too_large(f"the request is {len(body):,} bytes")
    return body, stabilityform.content_type(boundary)


def _too_large(what: str) -> PermanentApiError:
    return PermanentApiError(
        f"{what}, over the {apispec.STABILITY_MAX_REQUEST_BYTES:,} (10 MiB) a Stability "
        f"request may be: shrink the input image ({stabilityform.SHRINK}); nothing was sent",
        kind="too_large")


def check_finish(reason: str | None) -> None:
    """A 200 whose finish reason is not SUCCESS: CONTENT_FILTERED fails the job for good
    (the same request would be filtered again; no image is saved), another is retried."""
    if reason is None or reason.strip().upper() in ("", "SUCCESS"):
        return
    if reason.strip().upper() == CONTENT_FILTERED:
        raise PermanentApiError(
            "content filtered: the provider's moderation withheld this image "
            "(finish-reason CONTENT_FILTERED); change the prompt, or the seed",
            status=200, kind="content_filtered")
    raise RetryableApiError(f"finish-reason {printable(reason)[:40]}", status=200,
                            kind="finish_reason")


def parse_json(raw: bytes) -> tuple[str, str | None, int | None]:
    """(base64 image, finish_reason, seed) from a Stability JSON answer; RetryableApiError
    for one that lies."""
    doc = json_doc(raw)
    if not isinstance(doc, dict):
        raise RetryableApiError("unexpected response format", status=200, kind="format")
    reason = doc.get("finish_reason")
    reason = reason if isinstance(reason, str) else None
    seed = doc.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    image = doc.get("image")
    if reason is not None and reason.upper() == CONTENT_FILTERED:
        check_finish(reason)
    if not isinstance(image, str) or not image:
        raise RetryableApiError("unexpected response format (no image)", status=200,
                                kind="format")
    return image, reason, seed


STABILITY = Stability()

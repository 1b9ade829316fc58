"""The embedded server's Stability AI side: `POST /v2beta/stable-image/generate/ultra`.

Stability's shape, offline: a multipart/form-data body (refused otherwise; parts it does not
know are ignored, as Stability ignores them), `Accept: image/*` answered with the image's
bytes and `finish-reason` / `seed` headers, or `application/json` with `{"image",
"finish_reason", "seed"}` as `application/json; type=image/{fmt}`; errors as `{"id", "name",
"errors": [...]}` named as Stability's reference names them; every answer carries an
`x-request-id`. Its limit is played as documented: beyond
`stability_limit` requests in `stability_window` seconds, every request is answered 429 for
`stability_lockout` seconds. Faults (scripted or drawn): `content-filtered` (a 200 whose
finish-reason is CONTENT_FILTERED, with a blurred image, as Stability sends), `lockout` (a
429 that starts the lockout), `moderation` (403 content_moderation), `422`, `402` (out of
credits), and the server's common ones (500, 503, reset, truncate, not-image, wrong-format,
html, stall).
`[[filtered]]` in a prompt asks for content-filtered; `[[fail:NNN]]` for a status.
What fails, and when, is the pipeline's (imagebatch.service.faults); this module only reads
the form and shapes the answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import secrets
from typing import Any

from aiohttp import BodyPartReader, web

from ..planning import apispec, stabilityform
from .faults import (
    FILTERED_MARKER,
    NOT_IMAGE,
    STABILITY_FAULTS,
    Fake,
    Invalid,
    Limiter,
    Lockout,
    drawing,
)
from .render import blurred

_FIELDS = frozenset({"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format",
                     "strength", "image", "style_preset"})
#: Error names as Stability's reference spells them (422 has several: `invalid_language`
#: is the one played here); statuses it does not list keep a name of their own.
_NAMES = {400: "bad_request", 401: "unauthorized", 402: "payment_required",
          403: "content_moderation", 404: "not_found", 413: "payload_too_large",
          422: "invalid_language", 429: "rate_limit_exceeded", 500: "internal_error",
          503: "service_unavailable"}
#: The whole body, as Stability counts it (413 payload_too_large beyond).
MAX_FORM_BYTES = apispec.STABILITY_MAX_REQUEST_BYTES
_TOO_LARGE = "payloads cannot be larger than 10MiB in size"
_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def error_body(status: int, errors: list[str]) -> web.Response:
    """Stability's error shape: {"id", "name", "errors": [...]}; the id is its x-request-id."""
    request_id = secrets.token_hex(16)
    doc = {"id": request_id, "name": _NAMES.get(status, f"http_{status}"), "errors": errors}
    return web.json_response(doc, status=status, headers={"x-request-id": request_id})


async def read_form(request: web.Request) -> tuple[dict[str, str], bytes | None]:
    """The text fields and the image part of a multipart/form-data body; Invalid else."""
    if request.content_type != "multipart/form-data":
        raise Invalid(400, [f"Content-Type must be multipart/form-data, got "
                             f"{request.content_type or 'none'}"])
    fields: dict[str, str] = {}
    image: bytes | None = None
    reader = await request.multipart()
    received = request.content  # counts the body's bytes as they arrive, framing included

    def too_large() -> bool:
        return received.total_bytes > MAX_FORM_BYTES

    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise Invalid(400, ["nested multipart parts are not accepted"])
        name = part.name or ""
        data = bytearray()
        while chunk := await part.read_chunk(256 * 1024):
            data += chunk
            if too_large():  # a body without Content-Length is refused once it is over
                raise Invalid(413, [_TOO_LARGE])
        if name not in _FIELDS:
            # Stability ignores parts it does not know: its own Python sample and litellm
            # send an empty file part named `none` to force a multipart body.
            continue
        if name == "image":
            image = bytes(data)
        elif name in fields:
            raise Invalid(400, [f"{name}: given more than once"])
        else:
            try:
                fields[name] = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise Invalid(400, [f"{name}: not UTF-8 text"]) from None
    while await received.readany():  # the epilogue, if any, counts too
        if too_large():
            raise Invalid(413, [_TOO_LARGE])
    if too_large():
        raise Invalid(413, [_TOO_LARGE])
    return fields, image


def validate_form(fields: dict[str, str], image: bytes | None) -> dict[str, Any]:
    """The request as values, when it follows Stability's rules; Invalid naming each problem."""
    errors: list[str] = []
    prompt = fields.get("prompt", "")
    if not prompt.strip():
        errors.append("prompt: cannot be empty")
    elif len(prompt) > apispec.MAX_PROMPT_CHARS:
        errors.append(f"prompt: at most {apispec.MAX_PROMPT_CHARS} characters")
    if len(fields.get("negative_prompt", "")) > apispec.MAX_PROMPT_CHARS:
        errors.append(f"negative_prompt: at most {apispec.MAX_PROMPT_CHARS} characters")
    ratio = fields.get("aspect_ratio", apispec.DEFAULT_ASPECT)
    if ratio not in apispec.ASPECT_RATIOS:
        errors.append(f"aspect_ratio: must be one of {', '.join(apispec.ASPECT_RATIOS)}")
    fmt = fields.get("output_format", apispec.DEFAULT_FORMAT)
    if fmt not in apispec.STABILITY_OUTPUT_FORMATS:
        errors.append("output_format: must be one of png, jpeg, webp")
    seed = 0
    if "seed" in fields:
        try:
            seed = int(fields["seed"])
        except ValueError:
            seed = -1
        if not 0 <= seed <= apispec.STABILITY_MAX_SEED:
            errors.append(f"seed: must be a number from 0 to {apispec.STABILITY_MAX_SEED}")
    strength: float | None = None
    if "strength" in fields:
        try:
            strength = float(fields["strength"])
        except ValueError:
            strength = math.nan
        if not 0.0 <= strength <= 1.0:
            errors.append("strength: must be a number from 0 to 1")
    if image is not None and strength is None:
        errors.append("strength: required when an image is given")
    size = (0, 0)
    if image is not None:
        problem = stabilityform.input_image_problem(image)  # Ultra's rules, from the header
        if problem:
            errors.append(f"image: {problem}")
        else:
            size = stabilityform.input_image_size(image) or size
    if errors:
        raise Invalid(400, errors)
    out: dict[str, Any] = {"prompt": prompt, "negative_prompt": fields.get("negative_prompt", ""),
                           "aspect_ratio": ratio, "output_format": fmt, "seed": seed}
    if image is not None:
        # the answer keeps the input's shape: the nearest of the nine ratios
        w, h = size
        out["aspect_ratio"] = min(apispec.ASPECT_RATIOS, key=lambda r: abs(
            math.log((w / h) / (int(r.split(":")[0]) / int(r.split(":")[1])))))
        out["image_sha256"] = hashlib.sha256(image).hexdigest()
        out["strength"] = strength
    return out


class Stability(Fake):
    """`POST /v2beta/stable-image/generate/ultra` in Stability AI's shape."""

    plays = frozenset(STABILITY_FAULTS)
    max_bytes = MAX_FORM_BYTES

    def limiter(self) -> Limiter | None:
        """Stability's limit and lockout (always made: the lockout fault locks out even
        without a limit)."""
        o = self.options
        return Lockout(o.stability_limit, o.stability_window, o.stability_lockout)

    async def read(self, request: web.Request) -> tuple[dict[str, str], bytes | None]:
        """The form's text fields and image."""
        return await read_form(request)

    def recorded(self, raw: tuple[dict[str, str], bytes | None]) -> bytes:
        """The fields it knows, as JSON, the image as its SHA-256."""
        fields, image = raw
        return json.dumps(
            {**fields, **({"image": hashlib.sha256(image).hexdigest()} if image else {})},
            sort_keys=True).encode()

    def validate(self, raw: tuple[dict[str, str], bytes | None]) -> dict[str, Any]:
        """By Stability's rules (Ultra's for an input image)."""
        return validate_form(*raw)

    def key(self, body: dict[str, Any]) -> str:
        """The SHA-256 of the request's values."""
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def prompt(self, body: dict[str, Any]) -> str:
        """The form's prompt."""
        return str(body["prompt"])

    def too_large(self) -> Invalid:
        """413 payload_too_large, in Stability's words."""
        return Invalid(413, [_TOO_LARGE])

    def unauthorized(self) -> web.Response:
        """401 unauthorized."""
        return error_body(401, ["authorization: missing or invalid API key"])

    def invalid(self, problem: Invalid) -> web.Response:
        """The status, each problem one of `errors`."""
        return error_body(problem.status, problem.errors)

    def rate_limited(self, limiter: Limiter | None, now: float) -> web.Response:
        """429 rate_limit_exceeded; Retry-After only when asked for (Stability documents
        none, and a client must then assume the 60 s lockout, as imagebatch's does)."""
        response = error_body(429, ["You have exceeded the rate limit of 150 requests within "
                                    "a 10 second period, and have been timed out for "
                                    f"{self.options.stability_lockout:g} seconds."])
        wait = limiter.wait(now) if limiter is not None else 0.0
        if self.options.stability_retry_after and wait > 0:
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    def error(self, status: int, detail: str) -> web.Response:
        """Stability's error body, saying why."""
        return error_body(status, [detail])

    def fault_error(self, fault: str) -> web.Response | None:
        """moderation (403), 422 (invalid_language) and 402 (out of credits)."""
        if fault == "moderation":
            return error_body(403, ["Your request was flagged by our content moderation "
                                    "system, as a result your request was denied and you "
                                    "were not charged."])
        if fault == "422":
            return error_body(422, ["English is the only supported language for this "
                                    "service (injected fault)."])
        if fault == "402":  # payment_required: the account is out of credits
            return error_body(402, ["you lack sufficient credits to make this request; add "
                                    "credits to your account (injected fault)"])
        return None

    async def answer(self, request: web.Request, body: dict[str, Any], fault: str | None
                     ) -> web.StreamResponse:
        """The image's bytes with finish-reason and seed headers, or JSON for
        `Accept: application/json`; content-filtered blurs it, wrong-size is a whole image of
        another ratio, truncate cuts the bytes."""
        seed = body["seed"] or 1 + secrets.randbelow(apispec.STABILITY_MAX_SEED)
        fmt = body["output_format"]
        draw = drawing(body, fault)
        filtered = fault == "content-filtered" or FILTERED_MARKER in body["prompt"]
        if fault == "not-image":
            data = NOT_IMAGE
        else:
            try:
                data = await self.service.image(draw, seed)
                if filtered:
                    data = await asyncio.to_thread(blurred, data, fmt)
            except Exception as exc:  # noqa: BLE001 - a broken pool must answer, not hang
                return error_body(500, [f"render failed: {type(exc).__name__}"])
        reason = "CONTENT_FILTERED" if filtered else "SUCCESS"
        if fault == "truncate":
            data = data[: len(data) // 2]
        accept = request.headers.get("Accept", "image/*")
        if "application/json" in accept:
            doc = {"image": base64.b64encode(data).decode("ascii"), "finish_reason": reason,
                   "seed": seed}
            # Stability names the image's format in the JSON answer's content type
            return web.Response(status=200, body=json.dumps(doc).encode("ascii"), headers={
                "Content-Type": f"application/json; type={_TYPES.get(fmt, 'image/png')}"})
        if not ("image/" in accept or "*/*" in accept):
            return error_body(400, ["accept: must be image/* or application/json"])
        return web.Response(status=200, body=data, content_type=_TYPES.get(fmt, "image/png"),
                            headers={"finish-reason": reason, "seed": str(seed)})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """POST /v2beta/stable-image/generate/ultra; every answer has an x-request-id."""
        response = await self.service.handle(self, request)
        response.headers.setdefault("x-request-id", secrets.token_hex(16))
        return response


__all__ = [
    "MAX_FORM_BYTES",
    "STABILITY_FAULTS",
    "Stability",
    "error_body",
    "read_form",
    "validate_form",
]

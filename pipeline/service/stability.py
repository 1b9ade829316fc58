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
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import re
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from PIL import Image, ImageFilter

from ..planning import apispec, stabilityform

if TYPE_CHECKING:
    from .server import _Service

#: Faults only this side plays (the server's common kinds apply here too).
STABILITY_FAULTS: tuple[str, ...] = ("content-filtered", "lockout", "moderation", "422", "402")
_FIELDS = frozenset({"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format",
                     "strength", "image", "style_preset"})
_FILTERED = "[[filtered]]"
_FAIL_TRIGGER = re.compile(r"\[\[fail:(\d{3})\]\]")
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


class _Invalid(Exception):
    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.status = status
        self.errors = errors


def error_body(status: int, errors: list[str]) -> web.Response:
    """Stability's error shape: {"id", "name", "errors": [...]}; the id is its x-request-id."""
    request_id = secrets.token_hex(16)
    doc = {"id": request_id, "name": _NAMES.get(status, f"http_{status}"), "errors": errors}
    return web.json_response(doc, status=status, headers={"x-request-id": request_id})


class Lockout:
    """Stability's limit: `limit` requests in `window` s; one more locks out for `lockout` s."""

    def __init__(self, limit: int | None, window: float, lockout: float) -> None:
        self.limit, self.window, self.lockout = limit, window, lockout
        self._stamps: list[float] = []
        self.until = 0.0

    def lock(self, now: float) -> None:
        """Start a lockout now."""
        self.until = now + self.lockout

    def admit(self, now: float) -> bool:
        """Count one request; False when it is refused (locked out, or over the limit)."""
        if now < self.until:
            return False
        self._stamps = [t for t in self._stamps if t > now - self.window]
        if self.limit is not None and len(self._stamps) >= self.limit:
            self.lock(now)
            return False
        self._stamps.append(now)
        return True


async def read_form(request: web.Request) -> tuple[dict[str, str], bytes | None]:
    """The text fields and the image part of a multipart/form-data body; _Invalid else."""
    if request.content_type != "multipart/form-data":
        raise _Invalid(400, [f"Content-Type must be multipart/form-data, got "
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
            raise _Invalid(400, ["nested multipart parts are not accepted"])
        name = part.name or ""
        data = bytearray()
        while chunk := await part.read_chunk(256 * 1024):
            data += chunk
            if too_large():  # a body without Content-Length is refused once it is over
                raise _Invalid(413, [_TOO_LARGE])
        if name not in _FIELDS:
            # Stability ignores parts it does not know: its own Python sample and litellm
            # send an empty file part named `none` to force a multipart body.
            continue
        if name == "image":
            image = bytes(data)
        elif name in fields:
            raise _Invalid(400, [f"{name}: given more than once"])
        else:
            try:
                fields[name] = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise _Invalid(400, [f"{name}: not UTF-8 text"]) from None
    while await received.readany():  # the epilogue, if any, counts too
        if too_large():
            raise _Invalid(413, [_TOO_LARGE])
    if too_large():
        raise _Invalid(413, [_TOO_LARGE])
    return fields, image


def validate_form(fields: dict[str, str], image: bytes | None) -> dict[str, Any]:
    """The request as values, when it follows Stability's rules; _Invalid naming each problem."""
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
        raise _Invalid(400, errors)
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


def _blurred(data: bytes, fmt: str) -> bytes:
    """What Stability sends for a filtered image: the picture blurred beyond recognition."""
    with Image.open(io.BytesIO(data)) as img:
        out = img.convert("RGB").filter(ImageFilter.GaussianBlur(40))
    buf = io.BytesIO()
    out.save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buf.getvalue()


async def generate(service: _Service, request: web.Request) -> web.StreamResponse:
    """POST /v2beta/stable-image/generate/ultra; every answer has an x-request-id."""
    response = await _answer(service, request)
    response.headers.setdefault("x-request-id", secrets.token_hex(16))
    return response


async def _answer(service: _Service, request: web.Request) -> web.StreamResponse:
    from .server import _HTML_PAGE, _NOT_IMAGE, _reset

    options = service.options
    loop = asyncio.get_running_loop()
    stats = service.stats
    if not service._authorized(request) or service._revoked():
        return error_body(401, ["authorization: missing or invalid API key"])
    number = stats.requests
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return error_body(413, [_TOO_LARGE])
    try:
        fields, image = await read_form(request)
        if options.keep_bodies:
            stats.bodies.append(json.dumps(
                {**fields, **({"image": hashlib.sha256(image).hexdigest()} if image else {})},
                sort_keys=True).encode())
        body = validate_form(fields, image)
    except _Invalid as exc:
        return error_body(exc.status, exc.errors)
    lockout = service.lockout
    now = loop.time()
    fault_key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    fault = service.fault_for(fault_key, service.attempt(fault_key), number)
    if fault is not None:
        stats.faults[fault] += 1
    if fault == "lockout":
        lockout.lock(now)
    if fault in ("lockout", "429") or not lockout.admit(now):
        # Stability documents no Retry-After: sent only when asked for (a client must then
        # assume the 60 s lockout, as imagebatch's does)
        headers = ({"Retry-After": str(max(1, math.ceil(lockout.until - now)))}
                   if options.stability_retry_after and lockout.until > now else {})
        response = error_body(429, ["You have exceeded the rate limit of 150 requests within "
                                    "a 10 second period, and have been timed out for "
                                    f"{options.stability_lockout:g} seconds."])
        response.headers.update(headers)
        return response
    trigger = _FAIL_TRIGGER.search(body["prompt"])
    if trigger and 400 <= int(trigger.group(1)) <= 599:
        status = int(trigger.group(1))
        stats.faults[f"fail:{status}"] += 1
        return error_body(status, [f"requested by [[fail:{status}]] in the prompt"])
    if fault == "moderation":
        return error_body(403, ["Your request was flagged by our content moderation system, "
                                "as a result your request was denied and you were not charged."])
    if fault == "422":
        return error_body(422, ["English is the only supported language for this service "
                                "(injected fault)."])
    if fault == "402":  # payment_required: the account is out of credits (injected fault)
        return error_body(402, ["you lack sufficient credits to make this request; add "
                                "credits to your account (injected fault)"])
    if fault in ("500", "503"):
        return error_body(int(fault), ["injected fault"])
    if fault == "reset":
        return _reset(request)
    if fault == "html":
        return web.Response(status=200, content_type="text/html", text=_HTML_PAGE)
    if fault == "stall":
        await asyncio.sleep(options.stall_seconds)

    seed = body["seed"] or 1 + secrets.randbelow(apispec.STABILITY_MAX_SEED)
    fmt = body["output_format"]
    prompt = body["prompt"]
    if "image_sha256" in body:
        # a variation is drawn from the prompt, the input and the strength: other inputs,
        # other pictures; the caption says what it varies
        prompt = f"{prompt} (variation {body['strength']:g} of {body['image_sha256'][:8]})"
    draw = {"prompt": prompt, "negative_prompt": body["negative_prompt"],
            "aspect_ratio": body["aspect_ratio"], "output_format": fmt}
    if fault == "wrong-format":
        draw["output_format"] = "jpeg" if fmt != "jpeg" else "png"
    elif fault == "wrong-size":
        draw["size"] = "1024x1024" if body["aspect_ratio"] != "1:1" else "1344x768"
    filtered = fault == "content-filtered" or _FILTERED in body["prompt"]
    if fault == "not-image":
        data = _NOT_IMAGE
    else:
        try:
            data = await service.image(draw, seed)
            if filtered:
                data = await asyncio.to_thread(_blurred, data, fmt)
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

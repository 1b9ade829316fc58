"""The embedded server's Heroku side: api.md's `POST /v1/images/generations`.

Only the shape: a JSON body validated exactly as the hosted service does (every problem
named at once), `{"created", "data": [{"b64_json" | "url", "revised_prompt"}]}` answers,
images served back by `response_format: url`, errors as `{"error": {"code", "message",
"type"}}`, and 429s with Retry-After and `x-ratelimit-*` headers from the path's sliding
window (`rpm` per `window` seconds). What fails, and when, is the pipeline's
(imagebatch.service.faults).
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from typing import Any

from aiohttp import web

from ..planning import apispec
from ..planning.plan import job_key
from .faults import NOT_IMAGE, BoundedStore, Fake, Invalid, Limiter, Service, SlidingWindow

MAX_REQUEST_BYTES = 1024 * 1024  # far above any valid body (two 10,000-character prompts)
FILE_STORE_BYTES = 128 * 1024 * 1024  # images served by `response_format: url`
FILE_STORE_ENTRIES = 256
FILES_PREFIX = "/v1/images/files/"

_ALLOWED_FIELDS = frozenset({"model", "response_format", *apispec.REQUEST_FIELDS})

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "authorization_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
MESSAGES: dict[int, str] = {
    401: "Invalid API key",
    403: "You do not have access to that model",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


class InvalidRequest(Exception):
    """A body that breaks api.md's rules; the message names every field at fault."""


def error_response(
    status: int, message: str | None = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    """api.md's error body: {"error": {"code": status, "message": ..., "type": ...}}."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    doc = {"error": {"code": status, "message": message or MESSAGES.get(status, f"HTTP {status}"),
                     "type": kind}}
    return web.json_response(doc, status=status, headers=headers)


def validate(body: Any) -> dict[str, Any]:
    """The body itself when it follows api.md's rules; InvalidRequest naming each problem."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    problems: list[str] = []
    for name in sorted(set(body) - _ALLOWED_FIELDS):
        problems.append(f"unknown field {name!r}")

    def text(name: str, *, required: bool, nonempty: bool, limit: int | None) -> None:
        if name not in body:
            if required:
                problems.append(f"{name!r} is required")
            return
        value = body[name]
        if not isinstance(value, str):
            problems.append(f"{name!r} must be a string, got {type(value).__name__}")
        elif nonempty and not value.strip():
            problems.append(f"{name!r} must not be empty")
        elif limit is not None and len(value) > limit:
            problems.append(f"{name!r} is {len(value):,} characters; at most {limit:,} allowed")

    def choice(name: str, allowed: tuple[str, ...]) -> None:
        if name in body and body[name] not in allowed:
            problems.append(f"{name!r} must be one of {', '.join(allowed)}; got {body[name]!r}")

    text("model", required=True, nonempty=True, limit=None)
    text("prompt", required=True, nonempty=True, limit=apispec.MAX_PROMPT_CHARS)
    text("negative_prompt", required=False, nonempty=False, limit=apispec.MAX_PROMPT_CHARS)
    choice("aspect_ratio", apispec.ASPECT_RATIOS)
    choice("size", apispec.SIZES)
    choice("output_format", apispec.OUTPUT_FORMATS)
    choice("response_format", apispec.RESPONSE_FORMATS)
    if "seed" in body:
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= apispec.MAX_SEED:
            problems.append(f"'seed' must be an integer from 0 to {apispec.MAX_SEED}; got {seed!r}")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return body


class Heroku(Fake):
    """`POST /v1/images/generations` in Heroku Managed Inference's shape."""

    max_bytes = MAX_REQUEST_BYTES

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.files = BoundedStore(FILE_STORE_ENTRIES, FILE_STORE_BYTES)

    def limiter(self) -> Limiter | None:
        """The `rpm` sliding window, when there is one."""
        o = self.options
        return SlidingWindow(o.rpm, o.window) if o.rpm else None

    def rate_headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers every answer on this path carries (none unlimited)."""
        window = self.service.limiter(self)
        if not isinstance(window, SlidingWindow):
            return {}
        return window.headers(self.service.now())

    async def read(self, request: web.Request) -> bytes:
        """The raw body (the app refuses one over MAX_REQUEST_BYTES as it arrives)."""
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self.too_large() from None

    def recorded(self, raw: bytes) -> bytes:
        """The body as sent."""
        return raw

    def validate(self, raw: bytes) -> dict[str, Any]:
        """JSON whatever the Content-Type (curl's -d works), by api.md's rules."""
        try:
            try:
                doc = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise InvalidRequest(
                    "request body is not valid JSON (send the JSON object as the body)"
                ) from None
            return validate(doc)
        except InvalidRequest as exc:
            raise Invalid(400, [str(exc)]) from None

    def key(self, body: dict[str, Any]) -> str:
        """The job key, as the client computes it."""
        return job_key(body)

    def prompt(self, body: dict[str, Any]) -> str:
        """The body's prompt."""
        return str(body["prompt"])

    def too_large(self) -> Invalid:
        """413, naming the cap."""
        return Invalid(413, [f"Request body too large: over {MAX_REQUEST_BYTES} bytes"])

    def unauthorized(self) -> web.Response:
        """401 authentication_error."""
        return error_response(401, "Invalid API key: send 'Authorization: Bearer <key>'")

    def invalid(self, problem: Invalid) -> web.Response:
        """The status with every problem in one message."""
        return error_response(problem.status, str(problem))

    def rate_limited(self, limiter: Limiter | None, now: float) -> web.Response:
        """429 rate_limit_error; Retry-After (unless turned off) is when a slot frees."""
        headers: dict[str, str] = {}
        if self.options.retry_after:
            wait = limiter.wait(now) if limiter is not None else 0.0
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return error_response(429, headers=headers)

    def error(self, status: int, detail: str) -> web.Response:
        """api.md's error body for the status, saying why."""
        return error_response(status, f"{MESSAGES.get(status, f'HTTP {status}')} ({detail})")

    async def answer(self, request: web.Request, body: dict[str, Any], fault: str | None
                     ) -> web.StreamResponse:
        """`{"created", "data": [...]}`; wrong-format, wrong-size (a quarter of the size
        asked), not-image, bad-base64 and truncate spoil it."""
        seed = body.get("seed") or 1 + secrets.randbelow(apispec.MAX_SEED)
        fmt = apispec.image_format(body)
        draw = dict(body)
        if fault == "wrong-format":
            draw["output_format"] = "jpeg" if fmt == "png" else "png"
        elif fault == "wrong-size":
            w, h = apispec.pixel_size(body)
            draw["size"] = f"{w // 2}x{h // 2}"
        created = int(time.time())
        try:
            if body.get("response_format") == "url":
                data = NOT_IMAGE if fault == "not-image" else await self.service.image(draw, seed)
                name = f"{secrets.token_hex(16)}.{'jpg' if fmt == 'jpeg' else 'png'}"
                self.files.put(name, data, "image/jpeg" if fmt == "jpeg" else "image/png")
                url = f"{request.scheme}://{request.host}{FILES_PREFIX}{name}"
                item = json.dumps({"url": url, "revised_prompt": ""}).encode("ascii")
            else:
                b64 = (base64.b64encode(NOT_IMAGE) if fault == "not-image"
                       else await self.service.image_b64(draw, seed))
                if fault == "bad-base64":
                    mid = len(b64) // 2
                    b64 = b64[:mid] + b"!!not*base64!!" + b64[mid:]
                item = b'{"b64_json":"' + b64 + b'","revised_prompt":""}'
        except Exception as exc:  # noqa: BLE001 - a broken pool must answer, not hang
            return error_response(500, f"render failed: {type(exc).__name__}")
        answer = b'{"created":%d,"data":[' % created + item + b"]}"
        if fault == "truncate":
            answer = answer[: len(answer) // 2]
        return web.Response(status=200, body=answer, content_type="application/json")

    async def generations(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/images/generations."""
        return await self.service.handle(self, request)

    async def file(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/images/files/<id>.<ext>: an image made with response_format url."""
        item = self.files.get(request.match_info["name"])
        if item is None:
            return error_response(404, "No such image (unknown id, or expired from the store)")
        data, content_type = item
        return web.Response(body=data, content_type=content_type)


__all__ = [
    "FILES_PREFIX",
    "MAX_REQUEST_BYTES",
    "Heroku",
    "InvalidRequest",
    "error_response",
    "validate",
]

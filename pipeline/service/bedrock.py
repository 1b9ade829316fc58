"""The embedded server's Amazon Bedrock side: `POST /model/{modelId}/invoke`.

Bedrock's shape for Stable Image Ultra (model id `stability.stable-image-ultra-v1:1`),
offline: a JSON body (`prompt`, `negative_prompt`, `aspect_ratio`, `seed`, `output_format`
jpeg or png; `image` in base64 with `strength` for a variation), answered
`{"seeds": [n], "finish_reasons": [null], "images": ["<base64>"]}`. A filtered image has a
finish reason instead of null: "Filter reason: prompt" for `[[filtered]]` in the prompt,
"Filter reason: output image" for the `content-filtered` fault (the image is then blurred).
Errors are AWS's: the type in the `x-amzn-ErrorType` header, `{"message": ...}` as the body;
every answer carries an `x-amzn-RequestId`. The key is `Authorization: Bearer <key>` (a
Bedrock API key) or a SigV4 header naming the configured access key id (the signature itself
is not checked). What fails, and when, is the pipeline's (imagebatch.service.faults): its
own faults are `model-timeout` (408 ModelTimeoutException), `quota` (400
ServiceQuotaExceededException) and `content-filtered`, beside the common ones.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import uuid
from typing import Any

from aiohttp import web

from ..planning import apispec, stabilityform
from .faults import (
    BEDROCK_FAULTS,
    FILTERED_MARKER,
    NOT_IMAGE,
    Fake,
    Invalid,
    Limiter,
    SlidingWindow,
    bearer_matches,
    drawing,
)
from .render import blurred

MODEL_ID = "stability.stable-image-ultra-v1:1"
ROUTE = "/model/{model_id}/invoke"
#: InvokeModel's body is at most 25,000,000 bytes (a ValidationException beyond).
MAX_BODY_BYTES = 25_000_000
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png")
FILTERED_PROMPT = "Filter reason: prompt"
FILTERED_OUTPUT = "Filter reason: output image"

_FIELDS = frozenset({"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format",
                     "image", "strength", "mode"})
_SIGV4 = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/")
#: AWS's error types by status; a status it does not list takes the nearest kind.
ERROR_TYPES: dict[int, str] = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_MESSAGES: dict[int, str] = {
    403: "You don't have access to the model with the specified model ID.",
    404: "The requested resource could not be found.",
    408: "Model has timed out in processing the request. Try your request again.",
    429: "Too many requests, please wait before trying again.",
    500: "The server encountered an internal error while processing the request.",
    503: "The service is temporarily unable to handle the request.",
}


def error_type(status: int) -> str:
    """The x-amzn-ErrorType AWS names for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "InternalServerException" if status >= 500 else "ValidationException"


def aws_error(status: int, message: str, kind: str | None = None) -> web.Response:
    """AWS's error answer: `x-amzn-ErrorType: <kind>` and `{"message": ...}`."""
    return web.json_response({"message": message}, status=status,
                             headers={"x-amzn-ErrorType": kind or error_type(status)})


def _malformed(problems: list[str]) -> Invalid:
    # AWS names schema problems by JSON pointer in one sentence
    return Invalid(400, [f"Malformed input request: {', '.join(problems)}, please reformat "
                         "your input and try again."])


def validate(model_id: str, raw: bytes) -> dict[str, Any]:
    """The request as values, by Bedrock's rules for Ultra; Invalid naming each problem."""
    if model_id != MODEL_ID:
        raise Invalid(400, ["The provided model identifier is invalid."])
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Invalid(400, ["Malformed input request, please reformat your input and try "
                            "again."]) from None
    if not isinstance(doc, dict):
        raise _malformed(["#: expected type: JSONObject"])
    problems = [f"#: extraneous key [{name}] is not permitted"
                for name in sorted(set(doc) - _FIELDS)]

    def text(name: str, minimum: int) -> str:
        value = doc.get(name, "")
        if not isinstance(value, str):
            problems.append(f"#/{name}: expected type: String, found: {type(value).__name__}")
            return ""
        if len(value) < minimum:
            problems.append(f"#/{name}: expected minLength: {minimum}, actual: {len(value)}")
        elif len(value) > apispec.MAX_PROMPT_CHARS:
            problems.append(f"#/{name}: expected maxLength: {apispec.MAX_PROMPT_CHARS}, "
                            f"actual: {len(value)}")
        return value

    if "prompt" not in doc:
        problems.append("#: required key [prompt] not found")
        prompt = ""
    else:
        prompt = text("prompt", 1)
        if prompt and not prompt.strip():
            problems.append("#/prompt: must not be blank")
    negative = text("negative_prompt", 0)
    ratio = doc.get("aspect_ratio", apispec.DEFAULT_ASPECT)
    if ratio not in apispec.ASPECT_RATIOS:
        problems.append(f"#/aspect_ratio: {ratio!r} is not a valid enum value")
    fmt = doc.get("output_format", apispec.DEFAULT_FORMAT)
    if fmt not in OUTPUT_FORMATS:
        problems.append(f"#/output_format: {fmt!r} is not a valid enum value")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not (
            0 <= seed <= apispec.MAX_SEED):
        problems.append(f"#/seed: must be an integer from 0 to {apispec.MAX_SEED}")
        seed = 0
    strength = doc.get("strength")
    if strength is not None and (isinstance(strength, bool)
                                 or not isinstance(strength, (int, float))
                                 or not 0.0 <= strength <= 1.0):
        problems.append("#/strength: must be a number from 0 to 1")
    image: bytes | None = None
    if "image" in doc:
        if not isinstance(doc["image"], str):
            problems.append("#/image: expected type: String")
        else:
            try:
                image = base64.b64decode(doc["image"], validate=True)
            except (binascii.Error, ValueError):
                problems.append("#/image: is not valid base64")
        if strength is None:
            problems.append("#: required key [strength] not found")
    if image is not None:
        problem = stabilityform.input_image_problem(image)  # Ultra's rules, as Stability's
        if problem:
            problems.append(f"#/image: {problem}")
    if problems:
        raise _malformed(problems)
    out: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative,
                           "aspect_ratio": ratio, "output_format": fmt, "seed": seed}
    if image is not None:
        # the answer keeps the input's shape: the nearest of the nine ratios
        w, h = stabilityform.input_image_size(image) or (1, 1)
        out["aspect_ratio"] = min(apispec.ASPECT_RATIOS, key=lambda r: abs(
            math.log((w / h) / (int(r.split(":")[0]) / int(r.split(":")[1])))))
        out["image_sha256"] = hashlib.sha256(image).hexdigest()
        out["strength"] = float(strength) if strength is not None else 0.0
    return out


class Bedrock(Fake):
    """`POST /model/{modelId}/invoke` in Amazon Bedrock's shape, for Stable Image Ultra."""

    plays = frozenset({"content-filtered", *BEDROCK_FAULTS})
    max_bytes = MAX_BODY_BYTES

    def authorized(self, request: web.Request) -> bool:
        """A Bedrock API key as `Bearer <key>`, or SigV4 naming the configured access key id;
        anything when neither is configured."""
        o = self.options
        if o.key is None and o.aws_access_key_id is None:
            return True
        header = request.headers.get("Authorization", "")
        signed = _SIGV4.match(header)
        if signed:
            return o.aws_access_key_id is not None and hmac.compare_digest(
                signed.group(1).encode(), o.aws_access_key_id.encode())
        return o.key is not None and bearer_matches(request, o.key)

    def limiter(self) -> Limiter | None:
        """The `rpm` sliding window (a window of this path's own), when there is one."""
        o = self.options
        return SlidingWindow(o.rpm, o.window) if o.rpm else None

    async def read(self, request: web.Request) -> tuple[str, bytes]:
        """The model id and the raw body (refused once over MAX_BODY_BYTES)."""
        data = bytearray()
        while chunk := await request.content.readany():
            data += chunk
            if len(data) > MAX_BODY_BYTES:  # a body without Content-Length, refused once over
                raise self.too_large()
        return request.match_info["model_id"], bytes(data)

    def recorded(self, raw: tuple[str, bytes]) -> bytes:
        """The body, an input image replaced by its SHA-256."""
        try:
            doc = json.loads(raw[1])
        except ValueError:
            return raw[1]
        if isinstance(doc, dict) and isinstance(doc.get("image"), str):
            doc["image"] = hashlib.sha256(doc["image"].encode()).hexdigest()
        return json.dumps(doc, sort_keys=True).encode()

    def validate(self, raw: tuple[str, bytes]) -> dict[str, Any]:
        """By Bedrock's rules for Ultra."""
        return validate(*raw)

    def key(self, body: dict[str, Any]) -> str:
        """The SHA-256 of the request's values."""
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def prompt(self, body: dict[str, Any]) -> str:
        """The body's prompt."""
        return str(body["prompt"])

    def too_large(self) -> Invalid:
        """ValidationException: the body's length constraint."""
        return Invalid(400, ["1 validation error detected: Value at 'body' failed to satisfy "
                             f"constraint: Member must have length less than or equal to "
                             f"{MAX_BODY_BYTES}"])

    def unauthorized(self) -> web.Response:
        """403 AccessDeniedException (a wrong, missing or revoked key or signature)."""
        return aws_error(403, "The security token included in the request is invalid.")

    def invalid(self, problem: Invalid) -> web.Response:
        """ValidationException, every problem in one message."""
        return aws_error(problem.status, str(problem))

    def rate_limited(self, limiter: Limiter | None, now: float) -> web.Response:
        """429 ThrottlingException; AWS sends no Retry-After."""
        return aws_error(429, _MESSAGES[429])

    def error(self, status: int, detail: str) -> web.Response:
        """The AWS error for the status, saying why."""
        message = _MESSAGES.get(status, "The request could not be processed.")
        return aws_error(status, f"{message} ({detail})")

    def fault_error(self, fault: str) -> web.Response | None:
        """model-timeout (408 ModelTimeoutException) and quota (400
        ServiceQuotaExceededException)."""
        if fault == "model-timeout":
            return aws_error(408, f"{_MESSAGES[408]} (injected fault)")
        if fault == "quota":
            return aws_error(400, "Your request exceeds the service quota for your account. "
                                  "You can resubmit your request later. (injected fault)",
                             "ServiceQuotaExceededException")
        return None

    async def answer(self, request: web.Request, body: dict[str, Any], fault: str | None
                     ) -> web.StreamResponse:
        """`{"seeds", "finish_reasons", "images"}`; content-filtered blurs the image and names
        the reason; the common body faults spoil it as on the other paths."""
        seed = body["seed"] or 1 + secrets.randbelow(apispec.MAX_SEED)
        fmt = body["output_format"]
        draw = drawing(body, fault)
        reason: str | None = None
        if FILTERED_MARKER in body["prompt"]:
            reason = FILTERED_PROMPT
        elif fault == "content-filtered":
            reason = FILTERED_OUTPUT
        if fault == "not-image":
            data = NOT_IMAGE
        else:
            try:
                data = await self.service.image(draw, seed)
                if reason is not None:
                    data = await asyncio.to_thread(blurred, data, fmt)
            except Exception as exc:  # noqa: BLE001 - a broken pool must answer, not hang
                return aws_error(500, f"{_MESSAGES[500]} (render failed: "
                                      f"{type(exc).__name__})")
        b64 = base64.b64encode(data).decode("ascii")
        if fault == "bad-base64":
            mid = len(b64) // 2
            b64 = b64[:mid] + "!!not*base64!!" + b64[mid:]
        text = json.dumps({"seeds": [seed], "finish_reasons": [reason], "images": [b64]})
        if fault == "truncate":
            text = text[: len(text) // 2]
        return web.Response(status=200, body=text.encode("ascii"), content_type="application/json")

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        """POST /model/{modelId}/invoke; every answer has an x-amzn-RequestId."""
        response = await self.service.handle(self, request)
        response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
        return response


__all__ = [
    "ERROR_TYPES",
    "FILTERED_OUTPUT",
    "FILTERED_PROMPT",
    "MAX_BODY_BYTES",
    "MODEL_ID",
    "ROUTE",
    "Bedrock",
    "aws_error",
    "error_type",
    "validate",
]

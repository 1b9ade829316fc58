"""The embedded server's chat model: `POST /v1/chat/completions`, offline and deterministic.

It answers a request for prompts (see running/chat.py) with varied prompts built from the
brief, seeded by the request, so the same request gets the same prompts on every machine.
Faults are asked for in the brief, like `[[fail:NNN]]` in an image prompt: `[[fail:429]]`
(and any status), `[[chat:refuse]]` (a refusal in words, no prompts), `[[chat:malformed]]`
(arguments that are not JSON), `[[chat:few]]`, `[[chat:many]]`, `[[chat:duplicate]]`,
`[[chat:empty]]`, `[[chat:long]]`; and the server's scripted faults (`--script 1:429`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from aiohttp import web

ENDPOINT = "/v1/chat/completions"
_FAULT = re.compile(r"\[\[(?:chat:([a-z]+)|fail:(\d{3}))\]\]")
_ASK = re.compile(r"^Brief as JSON: (\{.*\})\s*$", re.MULTILINE)

_FRAMING = ("a wide establishing shot", "a close-up", "seen from above", "a low angle",
            "a quiet medium shot", "a symmetrical composition", "a candid moment",
            "an off-centre framing")
_LIGHT = ("at golden hour", "under soft overcast light", "lit by neon", "by candlelight",
          "in crisp morning light", "under a stormy sky", "in blue-hour twilight",
          "in dappled shade")
_STYLE = ("as a watercolour", "as a 35mm photograph", "as an ink drawing", "as a gouache "
          "painting", "in a flat vector style", "as a cinematic still", "as a linocut print",
          "as a pastel sketch")


class ChatFault(Exception):
    """A fault the request asked for that is an HTTP error, not an answer."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _ask(body: dict[str, Any]) -> dict[str, Any]:
    """The brief (as JSON in the last user message), or a brief made of the whole text."""
    messages = body.get("messages") or []
    text = ""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            text = str(message.get("content") or "")
    found = _ASK.search(text)
    if found:
        try:
            ask = json.loads(found.group(1))
            if isinstance(ask, dict):
                return ask
        except ValueError:
            pass
    return {"brief": text.strip() or "an image", "count": 4}


def prompts_for(ask: dict[str, Any], seed: bytes) -> list[str]:
    """`count` distinct prompts from the brief, seeded (the same ask, the same prompts)."""
    count = max(1, min(100, int(ask.get("count") or 4)))
    brief = _FAULT.sub("", str(ask.get("brief") or "an image")).strip().rstrip(".")
    vary, keep = str(ask.get("vary") or ""), str(ask.get("keep") or "")
    rng = random.Random(seed)
    combos = [(f, li, st) for f in _FRAMING for li in _LIGHT for st in _STYLE]
    rng.shuffle(combos)
    out = []
    for i, (framing, light, style) in enumerate(combos[:count], 1):
        text = f"{brief}, {framing}, {light}, {style}"
        if vary:
            text += f"; a take on {vary} of its own (variation {i})"
        if keep:
            text += f"; keep {keep}"
        out.append(text + ".")
    return out


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion for a parsed request; ChatFault for an HTTP fault asked for."""
    ask = _ask(body)
    seed = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    fault = _FAULT.search(str(ask.get("brief", "")))
    kind = fault.group(1) if fault else None
    if fault and fault.group(2):
        raise ChatFault(int(fault.group(2)))
    prompts = prompts_for(ask, seed)
    if kind == "few":
        prompts = prompts[:-1]
    elif kind == "many":
        prompts = [*prompts, prompts[0] + " Once more."]
    elif kind == "duplicate" and len(prompts) > 1:
        prompts[-1] = prompts[0]
    elif kind == "empty":
        prompts[-1] = "  "
    elif kind == "long":
        prompts[-1] = "x" * 10_001
    message: dict[str, Any]
    if kind == "refuse":
        message = {"role": "assistant", "content": "I can't help with that brief."}
    else:
        arguments = json.dumps({"prompts": prompts}, ensure_ascii=False)
        if kind == "malformed":
            arguments = arguments[: len(arguments) // 2]
        message = {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_" + seed.hex()[:16], "type": "function",
            "function": {"name": "write_prompts", "arguments": arguments}}]}
    used = sum(len(p) for p in prompts) // 4
    return {"id": "chatcmpl-" + seed.hex()[:24], "object": "chat.completion",
            "model": str(body.get("model") or "local-chat"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "stop" if kind == "refuse" else "tool_calls"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": used,
                      "total_tokens": 100 + used}}


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: the key checked, faults played, then `answer`."""
    from .faults import bearer_matches
    from .heroku import error_response  # the same envelope as the image endpoint's
    from .server import SERVICE_KEY  # server.py adds this route

    service = request.app[SERVICE_KEY]

    def limited() -> web.Response:
        # a chat model's rate limit, as the image endpoint answers it
        headers = {"Retry-After": "1"} if service.options.retry_after else {}
        return error_response(429, headers=headers)

    if not bearer_matches(request, service.options.key):
        return error_response(401, "Invalid API key: send 'Authorization: Bearer <key>'")
    number = service.stats.requests
    raw = await request.read()
    if service.options.keep_bodies:
        service.stats.bodies.append(raw)
    scripted = service.options.script.get(number)
    if scripted == "429":
        return limited()
    if scripted in ("500", "503"):
        return error_response(int(scripted), "injected fault")
    try:
        body = json.loads(raw.decode("utf-8"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        return error_response(400, "request body must be a JSON object with messages")
    try:
        return web.json_response(answer(body))
    except ChatFault as fault:
        if fault.status == 429:
            return limited()
        return error_response(fault.status, f"HTTP {fault.status} (requested in the brief)")

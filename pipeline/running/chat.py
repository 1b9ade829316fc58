"""The chat client: asks an OpenAI-compatible chat model for the prompts of a brief.

`POST {URL}/v1/chat/completions` (Heroku's chat models by default: `INFERENCE_URL`,
`INFERENCE_KEY`, `INFERENCE_MODEL_ID`), forcing one tool call whose arguments are
`{"prompts": [...]}`; an answer in the message's content as that JSON is taken too. The
answer is checked before use (the count, none empty, none too long, no duplicates). Calls
are paced and retried with the image runner's policy (retry.py); the key is sent only in
the Authorization header and scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..errors import (
    ApiError,
    AuthError,
    ImagebatchError,
    PermanentApiError,
    RetryableApiError,
    UnreachableError,
    printable,
)
from ..planning.promptlock import MAX_COUNT, Brief, prompts_problem
from ..providers.base import error_field
from .client import _scrub
from .retry import Pacer, RetrySettings, Sleep, build_retrying, parse_duration, parse_retry_after

ENDPOINT = "/v1/chat/completions"
DEFAULT_PREFIX = "INFERENCE"
DEFAULT_CHAT_MODEL = "claude-4-5-haiku"
TOOL = "write_prompts"
CHAT_RPM = 30.0  # a handful of briefs: spaced, never a burst
TIMEOUT = 120.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024

SYSTEM = ("You write prompts for a text-to-image model. Each prompt is one self-contained "
          "paragraph describing a single image: subject, setting, composition, light, "
          "style. No numbering, no quotes around it, no commentary. Answer only by calling "
          f"the {TOOL} tool.")


class ChatAnswerError(ImagebatchError):
    """The chat model's answer cannot be used as prompts (nothing is written)."""


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """Where the chat model is and how it is called."""

    url: str  # base URL, without /v1/...
    key: str | None = field(repr=False)
    model: str
    key_variable: str = f"{DEFAULT_PREFIX}_KEY"
    retry: RetrySettings = RetrySettings(retries=4)
    rpm: float = CHAT_RPM


def max_tokens(count: int) -> int:
    """A cheap ceiling on the answer: about 150 tokens a prompt, plus the JSON around them."""
    return min(8192, 200 + 150 * count)


def user_message(brief: Brief) -> str:
    """What the model is asked: the brief in words, then as JSON (which the offline server
    reads back)."""
    ask = {"brief": brief.brief, "count": brief.count, "vary": brief.vary, "keep": brief.keep}
    lines = [f"Write {brief.count} different prompts from this brief: {brief.brief}"]
    if brief.vary:
        lines.append(f"Vary from one prompt to the next: {brief.vary}")
    if brief.keep:
        lines.append(f"Keep the same in every prompt: {brief.keep}")
    lines.append(f"No two prompts alike; each at most 1,000 characters. Call {TOOL} with "
                 f"exactly {brief.count}.")
    lines.append("Brief as JSON: " + json.dumps(ask, ensure_ascii=False, sort_keys=True))
    return "\n".join(lines)


def request_body(brief: Brief, model: str) -> dict[str, Any]:
    """The chat request for one brief: a forced tool call with a JSON Schema'd answer."""
    schema = {"type": "object", "additionalProperties": False, "required": ["prompts"],
              "properties": {"prompts": {"type": "array", "minItems": brief.count,
                                         "maxItems": brief.count,
                                         "items": {"type": "string", "minLength": 1}}}}
    return {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": user_message(brief)}],
        "max_tokens": max_tokens(brief.count),
        "temperature": 1.0,
        "tools": [{"type": "function", "function": {
            "name": TOOL, "description": "Hand over the prompts written from the brief.",
            "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": TOOL}},
    }


def prompts_of(answer: Any, brief: Brief) -> list[str]:
    """The prompts of a chat completion, checked; ChatAnswerError says what is wrong."""
    try:
        choice = answer["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise ChatAnswerError("the chat model's answer has no choices[0].message; nothing "
                              "was written") from None
    if not isinstance(message, dict):
        raise ChatAnswerError("the chat model's answer is not a message; nothing was written")
    calls = message.get("tool_calls") or []
    if calls and isinstance(calls, list) and isinstance(calls[0], dict):
        raw = (calls[0].get("function") or {}).get("arguments", "")
    else:
        raw = message.get("content") or ""
    if choice.get("finish_reason") == "length":
        raise ChatAnswerError(f"the chat model's answer for {brief.job_id!r} was cut off at "
                              f"max_tokens; ask for fewer prompts")
    try:
        doc = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        said = " ".join(str(raw).split())[:200]
        raise ChatAnswerError(f"the chat model did not answer {brief.job_id!r} with prompts "
                              f"(it said: {said!r}); nothing was written") from None
    prompts = doc.get("prompts") if isinstance(doc, dict) else None
    if not isinstance(prompts, list):
        raise ChatAnswerError(f"the chat model's answer for {brief.job_id!r} has no list "
                              "`prompts`; nothing was written")
    problem = prompts_problem(prompts, brief.count)
    if problem:
        raise ChatAnswerError(f"the chat model's answer for {brief.job_id!r} was refused: "
                              f"{problem}; nothing was written (run expand again)")
    return [p.strip() for p in prompts]


class ChatClient:
    """Sends briefs to the chat model, one at a time, paced and retried."""

    def __init__(self, session: aiohttp.ClientSession, settings: ChatSettings, *,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._session = session
        self._settings = settings
        self._sleep = sleep
        self._pacer = Pacer(settings.rpm, sleep=sleep)

    async def write(self, brief: Brief) -> list[str]:
        """The brief's prompts, checked; retried on 429, 5xx and dropped connections."""
        if brief.count > MAX_COUNT:
            raise ChatAnswerError(f"a brief may ask for at most {MAX_COUNT} prompts")
        retrying = build_retrying(self._settings.retry, sleep=self._sleep)
        async for attempt in retrying:
            with attempt:
                return prompts_of(await self._send(brief), brief)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _send(self, brief: Brief) -> Any:
        s = self._settings
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if s.key:
            headers["Authorization"] = f"Bearer {s.key}"
        ticket = await self._pacer.acquire()
        try:
            async with self._session.post(
                s.url + ENDPOINT, json=request_body(brief, s.model), headers=headers,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            ) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                self._pacer.observe(resp.headers, resp.status, ticket)
                if resp.status != 200:
                    raise self._status_error(resp.status, raw, resp.headers)
        except ApiError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UnreachableError(_scrub(f"the chat service at {s.url} could not be reached "
                                          f"({type(exc).__name__}: {exc})", s.key)) from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RetryableApiError("the chat service answered with a body that is not JSON",
                                    status=200, kind="http") from None

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> ApiError:
        key = self._settings.key
        found = error_field(raw)  # the error envelope's message, as the image client reads it
        message = printable(" ".join(found.split()))[:500] if found else None
        said = f": {_scrub(message, key)}" if message else ""
        if status in (401, 403):
            return AuthError(f"the chat service rejected the key ({status}{said}): check "
                             f"{self._settings.key_variable}", status=status, kind="auth")
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            if retry_after is None:
                retry_after = parse_duration(headers.get("x-ratelimit-reset-requests"))
            return RetryableApiError(f"the chat service answered HTTP {status}{said}",
                                     status=status, kind="http", retry_after=retry_after)
        return PermanentApiError(f"the chat service refused the request (HTTP {status}{said})",
                                 status=status, kind="permanent")

"""When to send: the retry policy (built from settings in one function) and request pacing.

Retries: only RetryableApiError; wait = max(Retry-After if the server gave one, capped,
exponential backoff with full jitter, capped). Pacing: a leaky bucket of capacity one
(`--rpm`), plus the service's own rate-limit headers, so a key limited to N a minute is
used at its full rate without being refused.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from pipeline.errors import RetryableApiError

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How often and how long to retry."""

    retries: int = 5  # retries after the first attempt
    backoff_base: float = 1.0  # seconds; the first backoff is uniform in [0, base]
    backoff_cap: float = 30.0  # no single backoff longer than this
    retry_after_cap: float = 120.0  # a server asking for longer is believed only this far


def backoff_wait(settings: RetrySettings, rng: Callable[[], float] = random.random) -> Callable[
    [RetryCallState], float
]:
    """The tenacity wait: max(capped Retry-After, full-jitter exponential backoff)."""

    def wait(state: RetryCallState) -> float:
        exp = min(settings.backoff_cap, settings.backoff_base * 2 ** (state.attempt_number - 1))
        jitter = rng() * exp
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            return max(min(float(asked), settings.retry_after_cap), jitter)
        return jitter

    return wait


def build_retrying(
    settings: RetrySettings,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """The one place the retry policy is made: retry RetryableApiError only, re-raise the last."""
    return AsyncRetrying(
        stop=stop_after_attempt(settings.retries + 1),
        wait=backoff_wait(settings, rng),
        retry=retry_if_exception_type(RetryableApiError),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds in an OpenAI-style duration ('51s', '1m30s', '250ms', '6m0s', '2'), else None."""
    if not text:
        return None
    text = text.strip().lower()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(text: str | None, *, now: float | None = None) -> float | None:
    """Seconds asked by a Retry-After header (delta seconds or an HTTP date), else None."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(float(value)) if value is not None else None
    except (ValueError, OverflowError):  # "abc", "nan"; "inf", "1e400"
        return None


#: The start number of the request the current task is making (set by Pacer.acquire).
_TICKET: contextvars.ContextVar[int] = contextvars.ContextVar("pacer_ticket", default=0)


class Pacer:
    """Decides when the next request may start; one per run, made inside the running loop.

    - `rpm`: a leaky bucket of capacity one (starts evenly 60/rpm s apart);
      `auto_rpm` adopts the service's advertised per-minute limit when it sends one.
    - The service's `x-ratelimit-remaining-requests` / `-reset-requests`: once the budget of
      the window is spent, new starts wait until the window frees.
    - A 429 pauses every start (not just the refused job's) until Retry-After / the reset.
    """

    def __init__(
        self,
        rpm: float | None = None,
        *,
        auto_rpm: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        pause_cap: float = 120.0,
    ) -> None:
        self._limiter = AsyncLimiter(1, 60.0 / rpm) if rpm else None
        self.rpm = rpm
        self._auto = auto_rpm
        self._clock = clock
        self._sleep = sleep
        self._pause_cap = pause_cap
        self._resume_at = 0.0  # no start before this clock time
        self._budget: int | None = None  # starts left in the service's window, as last told
        self._free_at = 0.0  # clock time the window's oldest request leaves it, as last told
        self._news: asyncio.Event | None = None  # set by every observe()
        self._started = 0  # requests started so far (each gets this number as its ticket)

    async def acquire(self) -> None:
        """Wait until one more request may start."""
        # The even spacing first, the window's budget last: a start must not act on a
        # budget checked before a wait in the bucket.
        if self._limiter is not None:
            await self._limiter.acquire()
        while True:
            now = self._clock()
            if self._resume_at > now:
                await self._sleep(self._resume_at - now)
                continue
            if self._budget is not None and self._budget <= 0:
                if self._free_at > now:
                    await self._sleep(self._free_at - now)
                    continue
                if self._free_at > 0:
                    # The oldest request left the window: one slot is free for sure.
                    self._free_at, self._budget = 0.0, 1
                else:
                    # Spent, and no reset known: wait briefly for a response to say more.
                    self._news = self._news or asyncio.Event()
                    self._news.clear()
                    try:
                        await asyncio.wait_for(self._news.wait(), 1.0)
                    except asyncio.TimeoutError:
                        self._budget = None
                    continue
            break
        if self._budget is not None:
            self._budget -= 1
        self._started += 1
        _TICKET.set(self._started)  # observe() runs in this same task and reads it back

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        """Learn from one response's headers (any status)."""
        limit = _int_header(headers, "x-ratelimit-limit-requests")
        if self._auto and limit and limit > 0 and limit != self.rpm:
            self.rpm = float(limit)
            self._limiter = AsyncLimiter(1, 60.0 / limit)
        remaining = _int_header(headers, "x-ratelimit-remaining-requests")
        reset = parse_duration(headers.get("x-ratelimit-reset-requests"))
        if remaining is not None:
            # Requests started after this one were (most likely) not yet counted by the
            # service when it answered: take them off what it says is left.
            ticket = _TICKET.get()
            later = self._started - ticket if ticket else 0
            self._budget = remaining - later
            if reset is not None:
                self._free_at = self._clock() + min(reset, self._pause_cap)
        if self._news is not None:
            self._news.set()
        if status == 429:
            asked = parse_retry_after(headers.get("retry-after"))
            self._pause(asked if asked is not None else (reset if reset is not None else 1.0))

    def _pause(self, seconds: float) -> None:
        until = self._clock() + min(max(seconds, 0.0), self._pause_cap)
        self._resume_at = max(self._resume_at, until)

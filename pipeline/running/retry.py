"""When to send: the retry policy (built from settings in one function) and request pacing.

Retries: only RetryableApiError; wait = max(Retry-After if the server gave one, capped,
exponential backoff with full jitter, capped). Pacing: a Pacer per backend spaces starts
evenly (`--rpm`, a leaky bucket of capacity one), reads the service's own rate-limit
headers and pauses after a 429, so a key limited to N a minute is used at its full rate
without being refused. Pacers keep time on an injected clock and wait with an injected
sleep, the same ones the retry policy is given, so one fake clock drives both in tests.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from ..errors import RetryableApiError
from .settings import RetrySettings as RetrySettings  # where callers import it from

Sleep = Callable[[float], Awaitable[None]]


def backoff_wait(settings: RetrySettings, rng: Callable[[], float] = random.random) -> Callable[
    [RetryCallState], float
]:
    """The tenacity wait: max(capped Retry-After, full-jitter exponential backoff)."""

    def wait(state: RetryCallState) -> float:
        exp: float = min(settings.backoff_cap,
                         settings.backoff_base * 2 ** (state.attempt_number - 1))
        jitter = rng() * exp
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, RetryableApiError) else None
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


class Stopped(Exception):
    """A wait given up because the run is stopping: the job it was for stays pending."""


async def nap(sleep: Sleep, seconds: float, *wake: asyncio.Event) -> None:
    """`sleep(seconds)`, cut short the moment any event in `wake` is set."""
    if any(event.is_set() for event in wake):
        return
    if seconds <= 0 or not wake:
        await sleep(max(seconds, 0.0))
        return
    waits = [asyncio.ensure_future(sleep(seconds)),
             *(asyncio.ensure_future(event.wait()) for event in wake)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


#: How long a pacer whose window is spent, with no reset time known, waits for a response to
#: say more before it lets one request try.
NEWS_WAIT = 1.0


class Pacer:
    """Decides when the next request to one backend may start; made inside the running loop.

    - `rpm`: starts at least 60/rpm s apart (a leaky bucket of capacity one: no burst after
      a quiet spell); `auto_rpm` adopts the service's advertised per-minute limit.
    - The service's `x-ratelimit-remaining-requests` / `-reset-requests`: once the budget of
      the window is spent, new starts wait until the window frees.
    - A 429 pauses every start to this backend (not just the refused job's) until
      Retry-After / the reset.

    `try_start()` starts a request when one may start now and returns its ticket, the
    number `observe()` takes back with that request's response; `ready_at()` says when
    one may start, as far as the pacer knows; `acquire()` waits for a ticket.
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
        self.rpm = rpm
        self._interval = 60.0 / rpm if rpm else 0.0
        self._auto = auto_rpm
        self._clock = clock
        self._sleep = sleep
        self._pause_cap = pause_cap
        self._last_start: float | None = None  # clock time of the latest start
        self._resume_at = 0.0  # no start before this clock time
        self._budget: int | None = None  # starts left in the service's window, as last told
        self._free_at = 0.0  # clock time the window's oldest request leaves it, as last told
        self._spent_at: float | None = None  # budget spent with no reset known, since then
        self._news: asyncio.Event | None = None  # set by the next observe()
        self._started = 0  # requests started so far (each gets this number as its ticket)
        self._line = asyncio.Lock()  # acquire() callers, served first come, first served
        self._closed = False

    def close(self) -> None:
        """Start nothing more (its backend is dropped); wake whoever waits on it."""
        self._closed = True
        if self._news is not None:
            self._news.set()
            self._news = None

    def ready_at(self) -> float:
        """The clock time a request could start, as far as this pacer knows now."""
        if self._closed:
            return math.inf
        at = self._resume_at
        if self._interval and self._last_start is not None:
            at = max(at, self._last_start + self._interval)
        if self._budget is not None and self._budget <= 0:
            if self._free_at > 0:
                at = max(at, self._free_at)
            else:
                # Spent, and no reset known: wait briefly for a response to say more.
                if self._spent_at is None:
                    self._spent_at = self._clock()
                at = max(at, self._spent_at + NEWS_WAIT)
        return at

    def try_start(self) -> int | None:
        """Start one request now if it may start (its ticket), else None."""
        now = self._clock()
        if self.ready_at() > now:
            return None
        if self._budget is not None and self._budget <= 0:
            # The oldest request left the window (one slot is free for sure), or no response
            # said more within NEWS_WAIT: one request may try.
            self._budget = 1 if self._free_at > 0 else None
            self._free_at, self._spent_at = 0.0, None
        if self._budget is not None:
            self._budget -= 1
        self._last_start = now
        self._started += 1
        return self._started

    def news(self) -> asyncio.Event:
        """An event the next observe() sets: what it learns may let a start happen sooner."""
        if self._news is None:
            self._news = asyncio.Event()
        return self._news

    async def acquire(self, stop: asyncio.Event | None = None) -> int:
        """Wait until one more request may start; its ticket. Raises Stopped once `stop` is set.

        Callers are served in the order they came (asyncio.Lock is fair): a job that comes
        back for a retry queues behind those already waiting.
        """
        async with self._line:
            _pacer, ticket = await start_on(lambda: (self,), stop, clock=self._clock,
                                            sleep=self._sleep)
        return ticket

    def observe(self, headers: Mapping[str, str], status: int, ticket: int | None = None) -> None:
        """Learn from one response's headers (any status); `ticket` is its request's, from
        try_start()/acquire() (None: not known, the service's count is taken as is)."""
        limit = _int_header(headers, "x-ratelimit-limit-requests")
        if self._auto and limit and limit > 0 and limit != self.rpm:
            self.rpm = float(limit)
            self._interval = 60.0 / limit
        remaining = _int_header(headers, "x-ratelimit-remaining-requests")
        reset = parse_duration(headers.get("x-ratelimit-reset-requests"))
        if remaining is not None:
            # Requests started after this one were (most likely) not yet counted by the
            # service when it answered: take them off what it says is left.
            later = self._started - ticket if ticket else 0
            self._budget = remaining - later
            self._spent_at = None
            if reset is not None:
                self._free_at = self._clock() + min(reset, self._pause_cap)
        if self._news is not None:
            self._news.set()
            self._news = None
        if status == 429:
            asked = parse_retry_after(headers.get("retry-after"))
            self.pause(asked if asked is not None else (reset if reset is not None else 1.0))

    def pause(self, seconds: float) -> None:
        """No start before `seconds` from now (capped): a 429 cools this backend."""
        until = self._clock() + min(max(seconds, 0.0), self._pause_cap)
        self._resume_at = max(self._resume_at, until)


async def start_on(
    choose: Callable[[], Sequence[Pacer]], stop: asyncio.Event | None, *,
    clock: Callable[[], float], sleep: Sleep,
) -> tuple[Pacer, int]:
    """Wait until one of the pacers `choose()` names may start a request: (it, the ticket).

    `choose` is asked again after every wait, in order of preference: when several may
    start at once the first does. Raises Stopped the moment `stop` is set, however long the
    wait. Callers that wait together take turns through a lock of their own (first come,
    first served).
    """
    while True:
        if stop is not None and stop.is_set():
            raise Stopped
        pacers = choose()
        for pacer in pacers:
            ticket = pacer.try_start()
            if ticket is not None:
                return pacer, ticket
        wait = min(p.ready_at() for p in pacers) - clock()
        wake = [p.news() for p in pacers]
        await nap(sleep, wait, *wake, *([stop] if stop is not None else []))

"""The retry policy's waits (fake sleep, fixed jitter) and the pacer's decisions (fake clock)."""

from __future__ import annotations

import email.utils

import pytest

from imagebatch.errors import AuthError, PermanentApiError, RetryableApiError
from imagebatch.running.retry import (
    Pacer,
    RetrySettings,
    build_retrying,
    parse_duration,
    parse_retry_after,
)


class FakeTime:
    """A clock and a sleep that only moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


async def _run(retrying, errors):
    calls = []

    async def attempt():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return await retrying(attempt), len(calls)


async def test_full_jitter_backoff_doubles_and_caps():
    t = FakeTime()
    r = build_retrying(RetrySettings(retries=5, backoff_base=1.0, backoff_cap=5.0),
                       sleep=t.sleep, rng=lambda: 1.0)
    result, calls = await _run(r, [RetryableApiError("x")] * 5)
    assert (result, calls) == ("ok", 6)
    assert t.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_jitter_is_a_fraction_of_the_exponential():
    t = FakeTime()
    r = build_retrying(RetrySettings(retries=3, backoff_base=2.0), sleep=t.sleep, rng=lambda: 0.25)
    await _run(r, [RetryableApiError("x")] * 3)
    assert t.sleeps == [0.5, 1.0, 2.0]


async def test_retry_after_wins_when_longer_and_is_capped():
    t = FakeTime()
    r = build_retrying(RetrySettings(retries=3, retry_after_cap=120.0), sleep=t.sleep,
                       rng=lambda: 1.0)
    errs = [RetryableApiError("429", status=429, retry_after=7.0),
            RetryableApiError("429", status=429, retry_after=0.1),
            RetryableApiError("429", status=429, retry_after=3600.0)]
    await _run(r, errs)
    assert t.sleeps == [7.0, 2.0, 120.0]


async def test_gives_up_after_retries_and_reraises_the_last():
    t = FakeTime()
    r = build_retrying(RetrySettings(retries=2), sleep=t.sleep, rng=lambda: 0.0)
    with pytest.raises(RetryableApiError, match="third"):
        await _run(r, [RetryableApiError("first"), RetryableApiError("second"),
                       RetryableApiError("third"), RetryableApiError("never")])
    assert len(t.sleeps) == 2


@pytest.mark.parametrize("exc", [PermanentApiError("bad", status=400), AuthError("401"),
                                 ValueError("bug")])
async def test_never_retries_anything_else(exc):
    t = FakeTime()
    r = build_retrying(RetrySettings(retries=5), sleep=t.sleep)
    with pytest.raises(type(exc)):
        await _run(r, [exc, exc])
    assert t.sleeps == []


async def test_zero_retries_means_one_attempt():
    t = FakeTime()
    r = build_retrying(RetrySettings(retries=0), sleep=t.sleep)
    with pytest.raises(RetryableApiError):
        await _run(r, [RetryableApiError("x")])
    assert t.sleeps == []


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("text,seconds", [
    ("51s", 51.0), ("1m30s", 90.0), ("250ms", 0.25), ("6m0s", 360.0), ("2", 2.0),
    ("1h", 3600.0), ("0.5s", 0.5), ("", None), ("later", None), ("5x", None),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


async def test_pacer_waits_for_the_reset_once_the_window_is_spent():
    t = FakeTime()
    p = Pacer(clock=t.clock, sleep=t.sleep)
    await p.acquire()
    p.observe({"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "10s"}, 200)
    await p.acquire()  # the one left
    assert t.sleeps == []
    await p.acquire()  # spent: wait until the oldest request leaves the window
    assert t.sleeps == [10.0]


async def test_pacer_pauses_every_start_on_429_with_retry_after():
    t = FakeTime()
    p = Pacer(clock=t.clock, sleep=t.sleep)
    p.observe({"retry-after": "4"}, 429)
    await p.acquire()
    assert t.sleeps == [4.0]
    await p.acquire()
    assert t.sleeps == [4.0]


async def test_pacer_429_without_headers_falls_back_to_a_short_pause():
    t = FakeTime()
    p = Pacer(clock=t.clock, sleep=t.sleep)
    p.observe({"x-ratelimit-reset-requests": "3s"}, 429)
    await p.acquire()
    assert t.sleeps == [3.0]


async def test_pacer_pause_is_capped():
    t = FakeTime()
    p = Pacer(clock=t.clock, sleep=t.sleep, pause_cap=60.0)
    p.observe({"retry-after": "86400"}, 429)
    await p.acquire()
    assert t.sleeps == [60.0]


async def test_pacer_rpm_spaces_starts_evenly():
    t = FakeTime()
    p = Pacer(rpm=600, clock=t.clock, sleep=t.sleep)  # one start per 0.1 s, capacity one
    started = t.now
    for _ in range(4):
        await p.acquire()
    elapsed = t.now - started
    assert elapsed >= 0.25  # three gaps of 0.1 s after the first free start (never fewer)


async def test_pacer_auto_adopts_the_advertised_limit():
    p = Pacer(rpm=20, auto_rpm=True)
    p.observe({"x-ratelimit-limit-requests": "600"}, 200)
    assert p.rpm == 600
    fixed = Pacer(rpm=20)
    fixed.observe({"x-ratelimit-limit-requests": "600"}, 200)
    assert fixed.rpm == 20


async def test_pacer_observe_takes_off_the_requests_started_after_the_ticket():
    t = FakeTime()
    p = Pacer(clock=t.clock, sleep=t.sleep)
    first = await p.acquire()
    await p.acquire()
    await p.acquire()  # two started after `first` was answered
    p.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "5s"}, 200,
              first)
    await p.acquire()  # 3 left, less the 2 the service had not counted: 1
    assert t.sleeps == []
    await p.acquire()
    assert t.sleeps == [5.0]


async def test_a_stop_ends_a_pacer_wait_at_once():
    import asyncio

    from imagebatch.running.retry import Stopped

    forever = asyncio.Event()

    async def never_wakes(seconds: float) -> None:
        await forever.wait()

    p = Pacer(rpm=1, sleep=never_wakes)  # the second start would wait a minute
    stop = asyncio.Event()
    await p.acquire(stop)
    waiting = asyncio.ensure_future(p.acquire(stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting, 1.0)


async def test_pacer_spent_window_with_no_reset_waits_for_news_on_the_injected_clock():
    t = FakeTime()
    p = Pacer(clock=t.clock, sleep=t.sleep)
    ticket = await p.acquire()
    p.observe({"x-ratelimit-remaining-requests": "0"}, 200, ticket)
    await p.acquire()  # nothing said more within a second: one request may try
    assert t.sleeps == [1.0]

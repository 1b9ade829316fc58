"""The runner against fake clients and stores: concurrency, retries, failures, 401, stopping."""

from __future__ import annotations

import asyncio

import pytest
from runner_helpers import Clock, make_plan

from imagebatch.errors import AuthError, PermanentApiError, RetryableApiError, StoreError
from imagebatch.running.client import GeneratedImage
from imagebatch.running.runner import Runner, RunSettings


class FakeStore:
    """Keeps records in memory."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.saved: dict[str, tuple[bytes, int]] = {}
        self.failed: dict[str, str] = {}
        self.final: set[str] = set()  # keys failed with an answer a retry cannot change
        self.refuse = refuse  # job indexes whose image could not be saved

    def cannot_write(self, job):
        return f"cannot write {job.path}" if job.index in self.refuse else None

    def save(self, job, data, *, attempts, seconds, created, member=None):
        self.saved[job.key] = (data, attempts)

    def fail(self, job, error, *, attempts, seconds, member=None, final=False):
        self.failed[job.key] = error
        if final:
            self.final.add(job.key)


class FakeClient:
    """Answers from a script per job index: a list of exceptions to raise before succeeding."""

    def __init__(self, script=None, *, gate: asyncio.Event | None = None) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate = gate
        self.started: list[int] = []
        self._began = asyncio.Event()  # set each time a request starts

    async def until(self, done) -> None:
        """Return once `done()` holds, checked each time a request starts."""
        while not done():
            self._began.clear()
            await self._began.wait()

    async def generate(self, job, observe=None, sending=None):
        if sending is not None:
            sending()  # as the client does, just before its request goes out
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.append(job.index)
        self._began.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            queue = self.script.get(job.index, [])
            if queue:
                raise queue.pop(0)
            return GeneratedImage(data=b"img%d" % job.index, format="png", width=1, height=1)
        finally:
            self.in_flight -= 1


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def _work(store, n=10):
    return [(store, j) for j in make_plan(n).jobs]


async def test_all_jobs_run_with_bounded_concurrency():
    store, client = FakeStore(), FakeClient()
    runner = Runner(client, RunSettings(concurrency=3), sleep=FakeSleep())
    state = await runner.run(_work(store, 20))
    assert state.ok == 20 and state.failed == 0
    assert len(store.saved) == 20 and client.requests == 20
    assert 1 < client.max_in_flight <= 3


async def test_concurrency_far_above_the_job_count_starts_one_worker_per_job():
    store, client = FakeStore(), FakeClient()
    runner = Runner(client, RunSettings(concurrency=10_000_000), sleep=FakeSleep())
    state = await runner.run(_work(store, 3))
    assert state.ok == 3 and client.requests == 3
    assert len(runner._tasks) == 3  # not ten million idle tasks


async def test_a_job_whose_image_cannot_be_saved_fails_without_a_request():
    store, client = FakeStore(refuse=frozenset({1, 3})), FakeClient()
    runner = Runner(client, RunSettings(concurrency=2), sleep=FakeSleep())
    state = await runner.run(_work(store, 5))
    assert sorted(client.started) == [0, 2, 4] and client.requests == 3
    assert state.ok == 3 and state.failed == 2
    assert sorted((o.job.index, o.attempts, o.error) for o in state.outcomes) == [
        (1, 0, "cannot write fox/2.png"), (3, 0, "cannot write fox/4.png")]
    assert state.by_store[store].requests == 3
    assert set(store.failed.values()) == {"cannot write fox/2.png", "cannot write fox/4.png"}


def _throttled(n):
    return RetryableApiError("HTTP 429", status=429, retry_after=60.0)


async def test_nothing_but_429s_for_15_minutes_stops_the_run_and_fails_no_job():
    store, clock = FakeStore(), Clock()
    client = FakeClient({i: [_throttled(i)] * 10_000 for i in range(6)})
    runner = Runner(client, RunSettings(concurrency=2, retries=10_000), sleep=clock.sleep,
                    clock=clock, rng=lambda: 0.0)
    state = await runner.run(_work(store, 6))
    assert state.config_error is not None and "only 429" in state.config_error.message
    assert "quota" in state.config_error.message
    assert state.ok == 0 and store.failed == {}  # left pending: a later run goes on
    assert 900 <= clock.now <= 900 + 2 * 60 and client.requests <= 2 * (900 / 60 + 2)


async def test_429s_with_images_in_between_do_not_stop_the_run():
    store, clock = FakeStore(), Clock()
    client = FakeClient({0: [_throttled(0)] * 14})  # 14 minutes of 429 for one job, then ok
    runner = Runner(client, RunSettings(concurrency=1, retries=20), sleep=clock.sleep,
                    clock=clock, rng=lambda: 0.0)
    state = await runner.run(_work(store, 3))
    assert state.config_error is None and state.ok == 3


async def test_retryable_errors_retry_with_injected_waits_then_succeed():
    sleep = FakeSleep()
    store = FakeStore()
    client = FakeClient({0: [RetryableApiError("HTTP 503", status=503),
                             RetryableApiError("429", status=429, retry_after=9.0)]})
    runner = Runner(client, RunSettings(concurrency=1, retries=5, backoff_base=2.0), sleep=sleep,
                    rng=lambda: 1.0)
    state = await runner.run(_work(store, 1))
    assert state.ok == 1
    assert sleep.waits == [2.0, 9.0]
    (_data, attempts), = store.saved.values()
    assert attempts == 3
    assert state.by_store[store].requests == 3


async def test_gives_up_after_retries_with_reason():
    store = FakeStore()
    client = FakeClient({1: [RetryableApiError("HTTP 500")] * 10})
    runner = Runner(client, RunSettings(retries=2), sleep=FakeSleep(), rng=lambda: 0.0)
    state = await runner.run(_work(store, 3))
    assert (state.ok, state.failed) == (2, 1)
    (reason,) = store.failed.values()
    assert reason == "HTTP 500 (gave up after 3 attempts)"
    assert [o.job.index for o in state.outcomes] == [1]


async def test_permanent_error_fails_at_once():
    store, sleep = FakeStore(), FakeSleep()
    client = FakeClient({0: [PermanentApiError("prompt too long", status=400)]})
    runner = Runner(client, RunSettings(), sleep=sleep)
    state = await runner.run(_work(store, 2))
    assert (state.ok, state.failed) == (1, 1)
    assert list(store.failed.values()) == ["prompt too long"]
    assert store.final == set(store.failed)  # a 400 is the request's: the same again
    assert sleep.waits == [] and client.requests == 2


async def test_401_stops_new_requests_and_records_no_failure():
    store = FakeStore()
    client = FakeClient({0: [AuthError("the service rejected the key (401): check X_KEY")]})
    runner = Runner(client, RunSettings(concurrency=1), sleep=FakeSleep())
    state = await runner.run(_work(store, 10))
    assert state.config_error is not None and "X_KEY" in state.config_error.message
    assert client.requests == 1 and store.failed == {} and state.interrupted


async def test_stop_settles_in_flight_and_starts_nothing_new():
    gate = asyncio.Event()
    store = FakeStore()
    client = FakeClient(gate=gate)
    runner = Runner(client, RunSettings(concurrency=4), sleep=FakeSleep())
    task = asyncio.ensure_future(runner.run(_work(store, 50)))
    await client.until(lambda: client.in_flight >= 4)
    runner.stop()
    gate.set()
    state = await task
    assert state.ok == 4 and len(store.saved) == 4 and client.requests == 4


async def test_stop_interrupts_a_retry_wait():
    store = FakeStore()
    client = FakeClient({0: [RetryableApiError("HTTP 503")] * 3})
    never = asyncio.Event()

    async def long_sleep(seconds):
        await never.wait()

    runner = Runner(client, RunSettings(concurrency=1), sleep=long_sleep)
    task = asyncio.ensure_future(runner.run(_work(store, 3)))
    await client.until(lambda: client.requests >= 1)
    await asyncio.sleep(0)
    runner.stop()
    state = await asyncio.wait_for(task, 5)
    assert state.ok == 0 and state.failed == 0 and store.failed == {}


async def test_abort_cancels_in_flight_and_saves_nothing_half():
    gate = asyncio.Event()
    store = FakeStore()
    client = FakeClient(gate=gate)
    runner = Runner(client, RunSettings(concurrency=2), sleep=FakeSleep())
    task = asyncio.ensure_future(runner.run(_work(store, 5)))
    await client.until(lambda: client.in_flight >= 2)
    runner.abort()
    state = await asyncio.wait_for(task, 5)
    assert state.ok == 0 and store.saved == {}


async def test_store_error_stops_the_run():
    class FullStore(FakeStore):
        def save(self, job, data, **kw):
            raise StoreError("cannot write: No space left on device")

    client = FakeClient()
    runner = Runner(client, RunSettings(concurrency=1), sleep=FakeSleep())
    state = await runner.run(_work(FullStore(), 5))
    assert isinstance(state.store_error, StoreError) and client.requests == 1


async def test_jobs_start_in_plan_order():
    client = FakeClient()
    runner = Runner(client, RunSettings(concurrency=1), sleep=FakeSleep())
    await runner.run(_work(FakeStore(), 6))
    assert client.started == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_progress_callback_sees_every_job(concurrency):
    seen = []
    runner = Runner(FakeClient({2: [PermanentApiError("x")]}), RunSettings(concurrency=concurrency),
                    sleep=FakeSleep(), on_change=lambda st: seen.append((st.ok, st.failed)))
    await runner.run(_work(FakeStore(), 5))
    assert seen[-1] == (4, 1) and len(seen) == 5


def test_progress_bar_on_a_tty_redraws_one_line():
    import io

    from imagebatch.running.progress import Progress

    now = [0.0]
    buf = io.StringIO()
    p = Progress(10, stream=buf, tty=True, clock=lambda: now[0])
    now[0] = 30.0
    p.update(3, 1)
    now[0] = 30.05
    p.update(4, 1)  # too soon: not drawn
    p.close()
    text = buf.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    first, last = text.split("\r")[1:]
    assert "4/10 (40%) done 3 failed 1" in first and "ETA 0:45" in first
    assert "5/10 (50%) done 4 failed 1" in last and "/min" in text and "ETA" in text


def test_progress_off_a_tty_prints_plain_lines_every_few_seconds():
    import io

    from imagebatch.running.progress import Progress

    now = [0.0]
    buf = io.StringIO()
    p = Progress(100, stream=buf, tty=False, clock=lambda: now[0])
    for i in range(1, 50):
        now[0] = i * 0.5
        p.update(i, 0)
    lines = buf.getvalue().splitlines()
    assert 4 <= len(lines) <= 5 and all(ln.startswith("progress: ") for ln in lines)
    assert "\r" not in buf.getvalue()


async def test_pacing_and_backoff_run_on_one_injected_clock():
    from imagebatch.running.retry import Pacer
    from imagebatch.running.runner import Member

    clock, store = Clock(), FakeStore()
    client = FakeClient({1: [RetryableApiError("HTTP 503", status=503)]})
    pacer = Pacer(rpm=6, clock=clock, sleep=clock.sleep)  # one start every 10 s
    runner = Runner([Member(client, pacer)], RunSettings(concurrency=1, backoff_base=4.0),
                    sleep=clock.sleep, clock=clock, rng=lambda: 1.0)
    state = await runner.run(_work(store, 3))
    assert state.ok == 3 and client.requests == 4
    # starts at 0 and 10 (refused: 4 s of backoff, then the next slot), 20, 30
    assert clock.now == 30.0

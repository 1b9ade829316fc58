"""Plan + client + store -> results: concurrency, pacing, retries, stopping.

The runner talks to three small interfaces so tests can fake each: a client
(`async generate(job) -> GeneratedImage`, `requests`), a store (`cannot_write`, `save`,
`fail`), and a `sleep`. A fixed pool of `concurrency` workers pulls jobs in plan order, so
memory does not grow with the plan and nothing holds an image after it is written.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Protocol

from pipeline import apispec
from pipeline.client import SENT, GeneratedImage
from pipeline.errors import (
    ApiError,
    PermanentApiError,
    RetryableApiError,
    ServiceConfigError,
    StoreError,
)
from pipeline.plan import Job
from pipeline.retry import Pacer, RetrySettings, Sleep, build_retrying
from pipeline.store import Record


class ImageClient(Protocol):
    """What the runner needs from a client."""

    requests: int

    async def generate(self, job: Job) -> GeneratedImage:
        """One checked image for `job`, or an ApiError."""
        ...


class JobStore(Protocol):
    """What the runner needs from a store."""

    def cannot_write(self, job: Job) -> str | None:
        """Why the image of `job` could not be saved, or None (asked before sending)."""
        ...

    def save(
        self, job: Job, data: bytes, *, attempts: int, seconds: float, created: int | None
    ) -> Record:
        """Write the image and record it ok."""
        ...

    def fail(self, job: Job, error: str, *, attempts: int, seconds: float) -> Record:
        """Record a failure."""
        ...


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How hard to push: concurrency, pacing, retries, timeouts."""

    concurrency: int = 4
    rpm: float | None = None  # None: no pacing of our own
    auto_rpm: bool = False  # adopt the service's advertised per-minute limit
    retries: int = 5
    timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    retry_after_cap: float = 120.0
    # Seconds of nothing but 429s (no image in between) before the run stops: a key whose
    # quota is spent would otherwise have every job wait out its retries, for days on a
    # big plan, to record them all failed.
    throttled_stop: float = 900.0

    @property
    def retry(self) -> RetrySettings:
        """The retry part of the settings."""
        return RetrySettings(self.retries, self.backoff_base, self.backoff_cap, self.retry_after_cap)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one job ended in this run."""

    job: Job
    store: JobStore
    status: str  # ok | failed
    attempts: int
    error: str | None = None


class Stopped(Exception):
    """Raised inside a worker when the run is stopping: the job stays pending."""


@dataclass
class RunState:
    """Mutable counters of one run (read by progress display and the summary)."""

    ok: int = 0
    failed: int = 0
    outcomes: list[Outcome] = field(default_factory=list)  # failures only (successes: counted)
    ok_by_store: dict[int, int] = field(default_factory=dict)  # id(store) -> images made
    requests_by_store: dict[int, int] = field(default_factory=dict)  # id(store) -> attempts
    # What stopped the run as a configuration problem: a 401 (AuthError), or a service that
    # never answered or is not the image API (ServiceConfigError); reported with exit 2.
    config_error: ServiceConfigError | None = None
    store_error: StoreError | None = None
    interrupted: bool = False


class Runner:
    """Runs (store, job) pairs with a bounded worker pool; `stop()` settles, `abort()` cancels."""

    def __init__(
        self,
        client: ImageClient,
        settings: RunSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        pacer: Pacer | None = None,
        on_change: Callable[[RunState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.state = RunState()
        self._base_sleep = sleep
        self._pacer = pacer
        self._on_change = on_change
        self._clock = clock
        self._rng = rng
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Whether the service has sent any HTTP answer / any image in this run: until it has,
        # failures that say "wrong URL" stop the run instead of failing job after job.
        self._answered = False
        self._made = False
        self._unreachable = 0  # attempts that could not connect, before any answer
        self._throttled_since: float | None = None  # first 429 since the last image

    # -- stopping ----------------------------------------------------------------------
    def stop(self) -> None:
        """Start no more requests; requests in flight finish and are recorded."""
        self.state.interrupted = True
        if self._stop is not None:
            self._stop.set()

    def abort(self) -> None:
        """Cancel requests in flight too (a second Ctrl-C)."""
        self.stop()
        for task in self._tasks:
            task.cancel()

    @property
    def stopping(self) -> bool:
        """True once the run stops starting requests."""
        return self._stop is not None and self._stop.is_set()

    async def sleep(self, seconds: float) -> None:
        """The injected sleep, cut short (raising Stopped) when the run stops."""
        assert self._stop is not None
        if self._stop.is_set():
            raise Stopped
        if seconds <= 0:
            await self._base_sleep(0)
        else:
            nap = asyncio.ensure_future(self._base_sleep(seconds))
            halt = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({nap, halt}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                nap.cancel()
                halt.cancel()
        if self._stop.is_set():
            raise Stopped

    # -- running -----------------------------------------------------------------------
    async def run(self, work: Iterable[tuple[JobStore, Job]]) -> RunState:
        """Run every (store, job) pair until done, stopped, or a 401 / store error."""
        self._stop = asyncio.Event()
        items = iter(work)
        workers = max(1, self.settings.concurrency)
        if isinstance(work, Sized):
            # A worker is a task and its stack: --concurrency 1000000 on nine jobs once
            # took 1 GB and 14 s to start workers with nothing to do.
            workers = max(1, min(workers, len(work)))
        self._tasks = [asyncio.ensure_future(self._worker(items)) for _ in range(workers)]
        try:
            ended = await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
        for result in ended:
            # A worker that died of an unexpected error must not pass for a finished run (its
            # jobs silently not run, exit 0): let the error be seen.
            if isinstance(result, Exception):
                raise result
        return self.state

    async def _worker(self, items: Iterable[tuple[JobStore, Job]]) -> None:
        for store, job in items:
            if self.stopping:
                return
            try:
                await self._one(store, job)
            except Stopped:
                return
            except StoreError as exc:
                self.state.store_error = exc
                self.stop()
                return

    async def _paced(self, pacer: Pacer) -> None:
        """pacer.acquire(), given up (raising Stopped) the moment the run stops.

        The pacer's own waits use self.sleep and end on a stop, but its leaky bucket does
        not: at --rpm 20 each worker queued in it waited out its slot, 3 s apart, before it
        saw the stop, so Ctrl-C (or a stop for a wrong URL) took concurrency x 3 s to take
        effect. acquire() runs in this task (it leaves a per-task ticket for observe()), so
        the stop cancels this task while, and only while, it waits there.
        """
        assert self._stop is not None
        if self._stop.is_set():
            raise Stopped
        task = asyncio.current_task()
        assert task is not None
        armed = True

        def interrupt(_: object) -> None:
            if armed and task is not None:
                task.cancel()

        watcher = asyncio.ensure_future(self._stop.wait())
        watcher.add_done_callback(interrupt)
        try:
            await pacer.acquire()
        except asyncio.CancelledError:
            if not self.stopping:
                raise  # cancelled from outside, not by the stop
            if hasattr(task, "uncancel"):  # 3.11+: the cancel is handled here
                task.uncancel()
            raise Stopped from None
        finally:
            armed = False
            watcher.remove_done_callback(interrupt)
            watcher.cancel()

    async def _attempt(self, store: JobStore, job: Job, counter: list[int]) -> GeneratedImage:
        if self._pacer is not None:
            await self._paced(self._pacer)
        if self.stopping:
            raise Stopped
        counter[0] += 1
        by_store = self.state.requests_by_store
        by_store[id(store)] = by_store.get(id(store), 0) + 1
        sent = [0]
        token = SENT.set(sent)
        try:
            image = await self.client.generate(job)
        except ApiError as exc:
            self._check_service(exc)
            raise
        finally:
            SENT.reset(token)
            # the POST is counted above; an image download beside it is a request too
            by_store[id(store)] += max(0, sent[0] - 1)
        self._answered = self._made = True
        self._throttled_since = None
        return image

    def _check_service(self, exc: ApiError) -> None:
        """Turn a failure into a ServiceConfigError (stopping the run) when it means that the
        URL is wrong, rather than that this job failed.

        Without this, a URL that refuses connections or does not resolve cost every job its
        full retries and backoff, paced: minutes for a dozen jobs, hours for a big plan, to
        record every job failed for one wrong setting. A service that answers even once has a
        right URL: from then on such failures are transient and retried per job as before.
        """
        if exc.status is not None:
            self._answered = True
        where = getattr(self.client, "url_variable", "the service URL")
        if exc.kind == "unreachable" and not self._answered:
            self._unreachable += 1
            # the retry budget of one job, spent across the run: workers fail in parallel
            if self._unreachable > self.settings.retries:
                raise ServiceConfigError(
                    f"{exc.message}, {self._unreachable} attempts without an answer: check "
                    f"{where}", status=None, kind="unreachable") from None
        elif exc.status == 429:
            now = self._clock()
            if self._throttled_since is None:
                self._throttled_since = now
            elif now - self._throttled_since >= self.settings.throttled_stop:
                raise ServiceConfigError(
                    f"the service has answered only 429 (too many requests) for "
                    f"{(now - self._throttled_since) / 60:.0f} minutes, with no image in "
                    f"between: the key's quota may be spent. Finished images are kept; run "
                    f"the same command later to go on", status=429, kind="throttled") from None
        elif isinstance(exc, PermanentApiError) and exc.status == 404 and not self._made:
            # The endpoint itself is missing: every job would get the same 404. (Not an image
            # download's 404, which is retried: that file may just have expired.)
            raise ServiceConfigError(
                f"the service answered 404 ({exc.message}) to POST {apispec.ENDPOINT}: check "
                f"{where} (the base URL of the inference service) and the model id",
                status=404, kind="not_found") from None

    async def _one(self, store: JobStore, job: Job) -> None:
        started = self._clock()
        counter = [0]
        # Nothing is sent that could not be saved: such a job fails here, at no cost.
        refused = await asyncio.to_thread(store.cannot_write, job)
        if refused is not None:
            await asyncio.to_thread(store.fail, job, refused, attempts=0, seconds=0.0)
            self._finish(Outcome(job, store, "failed", 0, refused))
            return
        retrying = build_retrying(self.settings.retry, sleep=self.sleep,
                                  rng=self._rng or random.random)
        try:
            image: GeneratedImage = await retrying(self._attempt, store, job, counter)
        except Stopped:
            raise
        except ServiceConfigError as exc:
            # A config problem, not the job's: leave it pending, stop starting requests.
            if self.state.config_error is None:
                self.state.config_error = exc
            self.stop()
            raise Stopped from None
        except (PermanentApiError, RetryableApiError) as exc:
            reason = exc.message
            if isinstance(exc, RetryableApiError) and counter[0] > 1:
                reason = f"{reason} (gave up after {counter[0]} attempts)"
            await asyncio.to_thread(
                store.fail, job, reason, attempts=counter[0], seconds=self._clock() - started
            )
            self._finish(Outcome(job, store, "failed", counter[0], reason))
            return
        except ApiError as exc:  # an ApiError of no known kind: fail the job, keep going
            await asyncio.to_thread(
                store.fail, job, exc.message, attempts=counter[0], seconds=self._clock() - started
            )
            self._finish(Outcome(job, store, "failed", counter[0], exc.message))
            return
        data, created = image.data, image.created
        del image  # hand the bytes to the store and keep nothing after
        # Once an image is in hand, a second Ctrl-C must not leave it written but unrecorded
        # (or recorded after the summary): the save runs shielded, and a cancelled job still
        # waits for it and counts it before giving up.
        save = asyncio.ensure_future(asyncio.to_thread(
            store.save, job, data, attempts=counter[0], seconds=self._clock() - started,
            created=created,
        ))
        del data
        try:
            await asyncio.shield(save)
        except asyncio.CancelledError:
            await save
            self._finish(Outcome(job, store, "ok", counter[0]))
            raise
        self._finish(Outcome(job, store, "ok", counter[0]))

    def _finish(self, outcome: Outcome) -> None:
        if outcome.status == "ok":
            self.state.ok += 1
            by_store = self.state.ok_by_store
            by_store[id(outcome.store)] = by_store.get(id(outcome.store), 0) + 1
            # Successes are counted, not kept: memory stays flat however many jobs.
        else:
            self.state.failed += 1
            self.state.outcomes.append(outcome)
        if self._on_change is not None:
            self._on_change(self.state)


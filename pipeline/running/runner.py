"""Plan + client + store -> results: concurrency, pacing, retries, stopping.

The runner talks to small interfaces so tests can fake each: a client
(`async generate(job, observe, sending) -> GeneratedImage`), a store (`cannot_write`, `save`,
`fail`), a `sleep` and a `clock`. A fixed pool of `concurrency` workers pulls jobs in plan order, so
memory does not grow with the plan and nothing holds an image after it is written. Requests go to a
`Member`: a client with its own pacer (one for a single backend).

With several members (a pool), each attempt starts on the member that can start it
soonest. A member whose key is refused (401, 403) or out of credits (402), whose URL cannot
be reached, or that has no image endpoint is dropped for the rest of the run, and the job
goes on at once on another member, as does a job a member answered 429 (that member cools
on its own); none of these counts against the job's retries, since nothing was made. Only
when every member is dropped does the run stop.

A stop reaches every waiting worker through one event, `stop`, which both the retry waits
and the pacers' waits end on.

A budget (`budget`: image requests this run may send) is spent at the moment a request is
sent, retries and attempts a pool moves to another member included: each was sent. The
client says when that moment is (its `sending` callback, just before the request goes out),
so a job refused before it (an input image changed since planning) spends nothing, and a
request whose connection was refused gives its slot back. Once it is spent no request starts;
requests in flight settle, and jobs that would need another request stay pending
(`RunState.budget_reached`), as after a stop but not an interruption.

A failure that a retry of the same request cannot change (`final`: the request refused as it
is, or an image withheld by the provider's filter for a fixed seed) is recorded as such, and
later runs do not send it again until the request changes or `run --retry-failed` asks.

With claims (`claims`: the shared cache's, `imagebatch.running.claims`), a job is claimed
before its request is sent. A job another run has claimed is left for last: once the plan's
other jobs are started, a worker waits for it (its image restored from the cache, or the
job claimed and sent once that run's claim is gone); `RunState.waiting` counts them.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    ApiError,
    AuthError,
    PermanentApiError,
    RetryableApiError,
    ServiceConfigError,
    StoreError,
    UnreachableError,
)
from ..planning.plan import Job
from ..providers import default
from ..providers.base import Provider
from .retry import (
    Pacer,
    Sleep,
    Stopped,
    build_retrying,
    nap,
    start_on,
)
from .settings import RunSettings as RunSettings  # where callers import it from

if TYPE_CHECKING:
    from ..storage.store import Record
    from .client import GeneratedImage

_DEFAULTS = RunSettings()

#: Called with each response's headers and status as it arrives (for the pacer).
Observe = Callable[[Mapping[str, str], int], None]


class ImageClient(Protocol):
    """What the runner needs from a client."""

    async def generate(self, job: Job, observe: Observe | None = None,
                       sending: Callable[[], None] | None = None) -> GeneratedImage:
        """One checked image for `job` (with the HTTP requests it took), or an ApiError;
        `sending` is called just before the image request goes out (it may raise Stopped:
        then nothing is sent)."""
        ...


class JobClaims(Protocol):
    """What the runner needs from the shared cache's claims (None: no cache, no claims)."""

    async def claim(self, store: JobStore, job: Job) -> str:
        """Claim a job: "mine" (send it), "theirs" (another run makes it), "restored"."""
        ...

    async def wait(self, store: JobStore, job: Job, sleep: Sleep) -> str:
        """Wait for another run's image: "restored", or "mine" once its claim is gone."""
        ...

    async def release(self, store: JobStore, job: Job) -> None:
        """Give up the claim on a job that failed."""
        ...


class JobStore(Protocol):
    """What the runner needs from a store."""

    def cannot_write(self, job: Job) -> str | None:
        """Why the image of `job` could not be saved, or None (asked before sending)."""
        ...

    def save(
        self, job: Job, data: bytes, *, attempts: int, seconds: float, created: int | None,
        member: str | None = None,
    ) -> Record:
        """Write the image and record it ok (made by pool member `member`, if a pool's)."""
        ...

    def fail(
        self, job: Job, error: str, *, attempts: int, seconds: float, member: str | None = None
    ) -> Record:
        """Record a failure (its last attempt on pool member `member`, if a pool's); given
        `final=True`, one that later runs do not send again (see `final`)."""
        ...


class Member:
    """One backend requests go to: its client, its own pacer, and what it came to."""

    def __init__(self, client: ImageClient, pacer: Pacer, *, prefix: str = "") -> None:
        self.client = client
        self.pacer = pacer
        self.prefix = prefix  # the environment prefix naming its variables ("" for none)
        # whose request shape it speaks: the job recorded is the one sent to it
        # (a client that names none, e.g. a test's fake, speaks the default provider's)
        self.provider: Provider = getattr(client, "provider", None) or default()
        self.requests = 0  # HTTP requests sent to it
        self.images = 0  # images it delivered
        self.throttled = 0  # 429s it answered
        self.in_flight = 0
        # Whether it has sent any HTTP answer in this run: until it has, failures that say
        # "wrong URL" are counted against it rather than retried per job.
        self.answered = False
        self.unreachable = 0  # attempts in a row that could not connect
        self.dropped: str | None = None  # why it takes no more requests, once dropped

    @property
    def url_variable(self) -> str:
        """The variable holding its URL, named in messages about a URL that does not work."""
        return f"{self.prefix}_URL" if self.prefix else "the service URL"

    @property
    def key_variable(self) -> str:
        """The variable holding its key, named in messages about a refused key."""
        return f"{self.prefix}_KEY" if self.prefix else "the key"


class _Moved(Exception):
    """The member could not take the job (dropped, or cooling after a 429): start it again
    on another member, with no backoff and no retry spent."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one job ended in this run."""

    job: Job
    status: str  # ok | failed
    attempts: int
    error: str | None = None
    flag: str | None = None  # what is off about an image kept anyway (another size)


@dataclass
class StoreTally:
    """One store's share of a run: images made, HTTP requests sent, jobs failed."""

    made: int = 0
    requests: int = 0
    sent: int = 0  # image requests (POSTs) sent: what a budget and a price count
    flagged: int = 0  # images made and kept at another size than asked
    failures: list[Outcome] = field(default_factory=list)  # successes are counted, not kept


@dataclass
class RunState:
    """Mutable counters of one run (read by the progress display and the summary)."""

    ok: int = 0
    failed: int = 0
    by_store: dict[JobStore, StoreTally] = field(default_factory=dict)
    # What stopped the run as a configuration problem: a 401 or 402 (AuthError), or a service that
    # never answered or is not the image API (ServiceConfigError); reported with exit 2.
    config_error: ServiceConfigError | None = None
    store_error: StoreError | None = None
    interrupted: bool = False
    sent: int = 0  # image requests sent in this run, over every store
    budget_reached: bool = False  # the budget was spent: no request starts any more
    restored: int = 0  # jobs another run made: restored from the shared cache, not sent
    waiting: int = 0  # jobs left for last: another run is making them

    def tally(self, store: JobStore) -> StoreTally:
        """The counters of `store` (made on first use)."""
        found = self.by_store.get(store)
        if found is None:
            found = self.by_store[store] = StoreTally()
        return found

    @property
    def outcomes(self) -> list[Outcome]:
        """Every failed job of the run, store by store."""
        return [o for tally in self.by_store.values() for o in tally.failures]


class Runner:
    """Runs (store, job) pairs with a bounded worker pool; `stop()` settles, `abort()` cancels.

    `backend` is one client (paced by a pacer of its own with no limit but what the
    service's headers say) or the members to send to.
    """

    def __init__(
        self,
        backend: ImageClient | Sequence[Member],
        settings: RunSettings = _DEFAULTS,
        *,
        sleep: Sleep = asyncio.sleep,
        on_change: Callable[[RunState], None] | None = None,
        on_drop: Callable[[Member], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
        budget: int | None = None,
        on_saved: Callable[[JobStore, Job, Record], None] | None = None,
        claims: JobClaims | None = None,
    ) -> None:
        if isinstance(backend, Sequence):
            self.members = list(backend)
        else:
            self.members = [Member(backend, Pacer(clock=clock, sleep=sleep))]
        self.settings = settings
        self.state = RunState()
        self._base_sleep = sleep
        self._on_change = on_change
        self._on_drop = on_drop
        self._clock = clock
        self._rng = rng
        self.budget = budget  # image requests this run may send; None for no limit
        self._on_saved = on_saved  # told of each image once it is saved (the cache's uploads)
        self._claims = claims
        # jobs another run has claimed, waited for once every other job has started
        self._deferred: collections.deque[tuple[JobStore, Job]] = collections.deque()
        self._stop: asyncio.Event | None = None
        # Workers waiting to start take turns in the order they came, so a job back for a
        # retry queues behind jobs already waiting.
        self._line = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._made = False  # whether any image came back in this run
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
        await nap(self._base_sleep, seconds, self._stop)
        if self._stop.is_set():
            raise Stopped

    # -- running -----------------------------------------------------------------------
    async def run(self, work: Iterable[tuple[JobStore, Job]]) -> RunState:
        """Run every (store, job) pair until done, stopped, or a 401 / store error."""
        self._stop = asyncio.Event()
        items = iter(work)
        workers = max(1, self.settings.concurrency)
        if isinstance(work, Sized):
            # A worker is a task and its stack: no more of them than there are jobs.
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
            if not await self._run_one(store, job):
                return
        # Every job is started: now the ones other runs are making. The worker that
        # leaves one for last comes here after it, so none is left behind.
        while self._deferred:
            store, job = self._deferred.popleft()
            if not await self._run_one(store, job, waited=True):
                return

    async def _run_one(self, store: JobStore, job: Job, *, waited: bool = False) -> bool:
        """Run one job; False when the worker must stop (the run is stopping)."""
        if self.stopping:
            return False
        try:
            await self._one(store, job, waited=waited)
        except Stopped:
            return False
        except StoreError as exc:
            self.state.store_error = exc
            self.stop()
            return False
        return True

    async def _start(self) -> tuple[Member, int]:
        """Wait until a member may start a request: (the member, its pacer's ticket).

        Among members that may start at once, the one with the fewest requests in flight.
        Raises ServiceConfigError when every member has been dropped.
        """
        by_pacer = {m.pacer: m for m in self.members}

        def choose() -> list[Pacer]:
            live = [m for m in self.members if m.dropped is None]
            if not live:
                raise ServiceConfigError(
                    "every member of the pool was dropped: " + "; ".join(
                        f"{m.prefix}: {m.dropped}" for m in self.members))
            return [m.pacer for m in sorted(live, key=lambda m: m.in_flight)]

        async with self._line:
            pacer, ticket = await start_on(choose, self._stop, clock=self._clock,
                                           sleep=self._base_sleep)
        return by_pacer[pacer], ticket

    @property
    def _pooled(self) -> bool:
        return len(self.members) > 1

    async def _attempt(
        self, store: JobStore, job: Job, counter: list[int], last: list[Member]
    ) -> GeneratedImage:
        while True:
            if self.stopping:
                raise Stopped
            member, ticket = await self._start()
            counter[0] += 1
            last[:] = [member]
            try:
                return await self._send(member, ticket, store, job)
            except _Moved:
                continue

    def _spend(self, store: JobStore) -> None:
        """Count one image request about to be sent; Stopped (it is not sent) when the budget
        is spent. Called by the client just before the request goes out, with nothing
        awaited in between, so the count is exact."""
        if self.budget is not None and self.state.sent >= self.budget:
            self._budget_spent()
            raise Stopped
        self.state.sent += 1
        self.state.tally(store).sent += 1
        if self.budget is not None and self.state.sent >= self.budget:
            self._budget_spent()  # this one is the last: the others stop waiting now

    def _unspend(self, store: JobStore) -> None:
        """Give back the count of a request that never reached the wire (its connection was
        refused or never made): nothing was sent, so nothing is billed or spent. (Should it
        have been the budget's last, the run has already stopped starting requests.)"""
        self.state.sent -= 1
        self.state.tally(store).sent -= 1

    def _budget_spent(self) -> None:
        """Start no more requests; unlike stop(), the run is not interrupted, and
        post-processing still happens."""
        self.state.budget_reached = True
        if self._stop is not None:
            self._stop.set()

    async def _send(self, member: Member, ticket: int, store: JobStore, job: Job) -> GeneratedImage:
        tally = self.state.tally(store)

        def observe(headers: Mapping[str, str], status: int) -> None:
            member.pacer.observe(headers, status, ticket)

        spent = False

        def sending() -> None:
            nonlocal spent
            self._spend(store)
            spent = True

        member.in_flight += 1
        try:
            image = await member.client.generate(job, observe, sending)
        except ApiError as exc:
            if spent and exc.requests == 0:
                self._unspend(store)  # counted as it went, but it never reached the wire
            tally.requests += exc.requests
            member.requests += exc.requests
            if exc.status is not None:
                member.answered = True
                member.unreachable = 0
            if exc.status == 429:
                member.throttled += 1
                self._check_throttled()
            if self._pooled:
                self._check_member(member, exc)
            else:
                self._check_service(member, exc)
            raise
        finally:
            member.in_flight -= 1
        tally.requests += image.requests
        member.requests += image.requests
        member.images += 1
        member.answered = self._made = True
        member.unreachable = 0
        self._throttled_since = None
        return image

    def _check_member(self, member: Member, exc: ApiError) -> None:
        """In a pool: drop a member that cannot serve, and move the job when its member
        could not take it (raising _Moved); else leave the failure to the job's retries."""
        if member.dropped is not None:
            raise _Moved  # dropped while this request was in flight
        others = any(m.dropped is None for m in self.members if m is not member)
        if isinstance(exc, AuthError):
            self._drop(member, exc.message)
        elif isinstance(exc, PermanentApiError) and exc.status == 403 \
                and exc.kind != "moderation":  # Stability's 403 is about the prompt
            self._drop(member, f"the service refused its key (403: {exc.message}): check "
                               f"{member.key_variable}")
        elif isinstance(exc, UnreachableError):
            member.unreachable += 1
            # A member that has answered and is the last one left keeps its jobs: they are
            # retried (and recorded) as a single backend's would be.
            if member.unreachable > self.settings.retries and (others or not member.answered):
                self._drop(member, f"{exc.message}, {member.unreachable} attempts in a row: "
                                   f"check {member.url_variable}")
            elif not others:
                return
        elif (isinstance(exc, PermanentApiError) and exc.status == 404
              and member.images == 0):
            self._drop(member, f"it answered 404 ({exc.message}) to POST "
                               f"{member.provider.endpoint}: "
                               f"check {member.url_variable} and the model id")
        elif exc.status == 429 and others:
            member.pacer.pause(exc.retry_after if isinstance(exc, RetryableApiError)
                               and exc.retry_after is not None else 1.0)
            raise _Moved
        else:
            return
        raise _Moved

    def _drop(self, member: Member, reason: str) -> None:
        member.dropped = reason
        member.pacer.close()
        if self._on_drop is not None:
            self._on_drop(member)

    def _check_service(self, member: Member, exc: ApiError) -> None:
        """Turn a failure into a ServiceConfigError (stopping the run) when it means that the
        URL is wrong, rather than that this job failed.

        A URL that refuses connections or does not resolve would otherwise cost every job
        its full retries and backoff, paced, to record every job failed for one wrong
        setting. A service that answers even once has a right URL: from then on such
        failures are transient and retried per job.
        """
        if isinstance(exc, UnreachableError) and not member.answered:
            member.unreachable += 1
            # the retry budget of one job, spent across the run: workers fail in parallel
            if member.unreachable > self.settings.retries:
                raise ServiceConfigError(
                    f"{exc.message}, {member.unreachable} attempts without an answer: check "
                    f"{member.url_variable}", status=None) from None
        elif isinstance(exc, PermanentApiError) and exc.status == 404 and not self._made:
            # The endpoint itself is missing: every job would get the same 404. (Not an image
            # download's 404, which is retried: that file may just have expired.)
            raise ServiceConfigError(
                f"the service answered 404 ({exc.message}) to POST "
                f"{member.provider.endpoint}: check "
                f"{member.url_variable} (the base URL of the inference service) and the "
                f"model id", status=404) from None

    def _check_throttled(self) -> None:
        """Stop the run (ServiceConfigError) after `throttled_stop` seconds of nothing but
        429s, with no image in between."""
        now = self._clock()
        if self._throttled_since is None:
            self._throttled_since = now
        elif now - self._throttled_since >= self.settings.throttled_stop:
            raise ServiceConfigError(
                f"the service has answered only 429 (too many requests) for "
                f"{(now - self._throttled_since) / 60:.0f} minutes, with no image in "
                f"between: the key's quota may be spent. Finished images are kept; run "
                f"the same command later to go on", status=429) from None

    async def _one(self, store: JobStore, job: Job, *, waited: bool = False) -> None:
        started = self._clock()
        counter = [0]
        # Nothing is sent that could not be saved: such a job fails here, at no cost.
        refused = await asyncio.to_thread(store.cannot_write, job)
        if refused is not None:
            await asyncio.to_thread(store.fail, job, refused, attempts=0, seconds=0.0)
            self._finish(store, Outcome(job, "failed", 0, refused))
            return
        if self._claims is not None and not await self._claimed(store, job, waited):
            return
        last: list[Member] = []  # the member of the latest attempt
        retrying = build_retrying(self.settings.retry, sleep=self.sleep,
                                  rng=self._rng or random.random)
        try:
            image: GeneratedImage = await retrying(self._attempt, store, job, counter, last)
        except Stopped:
            raise
        except ServiceConfigError as exc:
            # A config problem, not the job's: leave it pending, stop starting requests.
            if self.state.config_error is None:
                self.state.config_error = exc
            self.stop()
            raise Stopped from None
        except ApiError as exc:
            reason = exc.message
            if isinstance(exc, RetryableApiError) and counter[0] > 1:
                reason = f"{reason} (gave up after {counter[0]} attempts)"
            # only when set: a store need not know of final failures to record failures
            held = {"final": True} if final(job, exc) else {}
            await asyncio.to_thread(
                store.fail, _sent(job, last), reason, attempts=counter[0],
                seconds=self._clock() - started, member=self._name(last), **held,
            )
            self._finish(store, Outcome(job, "failed", counter[0], reason))
            if self._claims is not None:
                await self._claims.release(store, job)  # a waiting run may make it
            return
        data, created, flag = image.data, image.created, image.flag
        # the seed the provider says it used (Stability's `seed` header), when it says one,
        # and what is off about an image kept anyway (another size than asked)
        extra: dict[str, Any] = {"seed": image.seed} if image.seed is not None else {}
        if flag is not None:
            extra["flag"] = flag
        del image  # hand the bytes to the store and keep nothing after
        # Once an image is in hand, a second Ctrl-C must not leave it written but unrecorded
        # (or recorded after the summary): the save runs shielded, and a cancelled job still
        # waits for it and counts it before giving up.
        save = asyncio.ensure_future(asyncio.to_thread(
            store.save, _sent(job, last), data, attempts=counter[0],
            seconds=self._clock() - started, created=created, member=self._name(last), **extra,
        ))
        del data
        try:
            rec = await asyncio.shield(save)
        except asyncio.CancelledError:
            self._saved(store, job, await save, counter[0], flag)
            raise
        self._saved(store, job, rec, counter[0], flag)

    async def _claimed(self, store: JobStore, job: Job, waited: bool) -> bool:
        """Whether this run sends `job`: claimed, or another run's claim waited out. A job
        another run claims is left for last (False); one restored from the cache, whether
        it was there when claimed or appeared while waited for, is counted (False)."""
        assert self._claims is not None
        if waited:
            try:
                got = await self._claims.wait(store, job, self.sleep)
            finally:
                self.state.waiting -= 1
                self._changed()
        else:
            got = await self._claims.claim(store, job)
        if got == "theirs":
            self.state.waiting += 1
            self._deferred.append((store, job))
            self._changed()
            return False
        if got == "restored":
            self.state.restored += 1
            self._changed()
            return False
        return True

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.state)

    def _saved(self, store: JobStore, job: Job, rec: Record, attempts: int,
               flag: str | None = None) -> None:
        self._finish(store, Outcome(job, "ok", attempts, flag=flag))
        if self._on_saved is not None:
            self._on_saved(store, job, rec)

    def _name(self, last: list[Member]) -> str | None:
        """The prefix of the member of the latest attempt, recorded for a pool's jobs."""
        return last[0].prefix if self._pooled and last else None

    def _finish(self, store: JobStore, outcome: Outcome) -> None:
        tally = self.state.tally(store)
        if outcome.status == "ok":
            self.state.ok += 1
            tally.made += 1
            tally.flagged += outcome.flag is not None
        else:
            self.state.failed += 1
            tally.failures.append(outcome)
        if self._on_change is not None:
            self._on_change(self.state)


#: Statuses that refuse the request as it is (400 bad request, 413 too large, 422 rejected):
#: the same request gets them again.
FINAL_STATUSES = frozenset({400, 413, 422})


def final(job: Job, exc: ApiError) -> bool:
    """Whether `exc` is an answer a retry of the same request cannot change, so that later
    runs do not pay for it again: a refusal of the request itself (FINAL_STATUSES, and
    Stability's 403 content_moderation, the prompt flagged), or an image its filter withheld
    (CONTENT_FILTERED, billed) for a fixed seed. A seed of 0 asks for a new random seed each
    time, and another draw may pass the filter: that failure is sent again by the next run.
    Faults of the service, the key or the URL are never final."""
    if not isinstance(exc, PermanentApiError) or isinstance(exc, ServiceConfigError):
        return False
    if exc.kind == "content_filtered":
        return job.seed != 0
    return exc.kind == "moderation" or exc.status in FINAL_STATUSES


def _sent(job: Job, last: list[Member]) -> Job:
    """The job as its last member was sent it (its provider's key and body): what is recorded."""
    if not last or not job.variants:
        return job
    return job.for_provider(last[0].provider)

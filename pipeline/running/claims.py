"""Claims: two runs at once on one shared cache pay for each image once.

Before a job's request is sent, the run claims the job in the cache: a small object, made
with a create-only put, holding the run's id and when the claim expires (a lease, renewed
while the run holds it). A run that finds another run's live claim leaves the job for
last, then waits for its image to appear in the cache and restores it (verified, as any
restore is), or claims and makes it itself once the claim is gone or has lapsed. A claim is
given up when its image is in the cache (deleted: its job is done for everyone), and when
the run does not make the image (the job failed, the run stopped: released, so a waiting
run takes it over at once). A run that dies without giving them up leaves claims that lapse;
its own outputs folder's next run takes them over at once (see `where` below).

The protocol, over create-only puts alone (a folder cannot compare and swap):

- Claiming makes generation 0 of the job's claim. When that exists, the highest
  generation decides: a live one is another run's; a lapsed (or unreadable) one is taken
  over by creating the next generation, which only one of several runs can do.
- Once claimed, the cache is looked at again for the job's image: the claim of a run that
  made it is deleted only after the image was uploaded, so an image made since this run
  listed the cache is found here, restored, and not paid for twice.
- A generation below the highest is deleted only once the image is in the cache; so while
  no image is there, a missing generation 0 means that no run holds the job.
- A claim records `where` it was made: a hash of the machine's name and the outputs
  folder. One run at a time writes an outputs folder (it is locked), so a live claim of
  another run made for this very folder is a dead run's (killed, crashed), and is taken
  over as a lapsed one would be: a killed run started again does not wait out its leases.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..planning.plan import Job
from ..storage.cache import claim_body, claim_name
from ..storage.store import Store
from . import cache as cached
from .retry import Sleep

#: What claiming a job came to: this run holds it (send the request), another run holds it
#: (wait), or its image was in the cache after all and has been restored (nothing to send).
Claimed = Literal["mine", "theirs", "restored"]
FIRST_POLL = 0.2  # seconds before a waiting run looks at the cache again, doubled each time
POLL_CAP = 2.0  # ...up to this: an image another run uploads is seen within seconds
_TRIES = 5  # claims deleted while being read: look again this many times, then wait


@dataclass(frozen=True, slots=True)
class _Held:
    name: str  # the object of the generation this run made
    generation: int
    store: Store  # the outputs folder it was claimed for (a job may be in two)


class Claims:
    """One run's claims on the cache of `transfers`, each lasting `lease` seconds unless
    renewed. `clock` is the wall clock (claims are compared across machines); `sleep`
    paces the renewals."""

    def __init__(self, transfers: cached.Transfers, lease: float, *, run: str | None = None,
                 clock: Callable[[], float] = time.time, sleep: Sleep = asyncio.sleep) -> None:
        self.transfers = transfers
        self.cache = transfers.cache
        self.lease = lease
        self.run = run or uuid.uuid4().hex[:16]  # names nothing but this run
        self._clock = clock
        self._sleep = sleep
        self._held: dict[tuple[str, str], _Held] = {}  # (backend, key) -> the claim held
        # A renewal and a deletion of one claim never cross: a renewal landing after the
        # deletion would leave a live claim on a job nobody makes.
        self._lock = asyncio.Lock()
        self._renewing: asyncio.Task[None] | None = None
        self._warned = False

    # -- the runner's side ---------------------------------------------------------------
    async def claim(self, store: Store, job: Job) -> Claimed:
        """Claim `job` before its request is sent: "mine" (send it), "theirs" (another run
        holds a live claim: wait for it), or "restored" (its image was in the cache)."""
        return (await self._claim(store, job))[0]

    async def wait(self, store: Store, job: Job, sleep: Sleep) -> Claimed:
        """Wait for the image of a job another run claimed: "restored" once it is in the
        cache (and restored here), "mine" once the claim is gone or lapsed and this run
        holds it. Looks again after 0.2 s, then twice as long each time up to 2 s, never
        sleeping past the claim's expiry; `sleep` raises when the run stops."""
        delay = FIRST_POLL
        while True:
            if await self._restore(store, job):
                return "restored"
            got, expires = await self._claim(store, job)
            if got != "theirs":
                return got
            await sleep(max(0.01, min(delay, expires - self._clock() + 0.05)))
            delay = min(delay * 2, POLL_CAP)

    async def release(self, store: Store, job: Job) -> None:
        """Give up the claim on `job` without its image (it failed): a waiting run takes
        it over at once."""
        held = self._take(store, job)
        if held is not None:
            await self._delete([held.name])

    async def settle(self, store: Store, job: Job, *, in_cache: bool) -> None:
        """The upload of `job`'s image is over: with the image `in_cache`, every generation
        of its claim is deleted (the job is done for every run); else the claim is
        released."""
        held = self._take(store, job)
        if held is None:
            return
        names = [held.name]
        if in_cache and held.generation:  # lapsed generations below ours: a crashed run's
            try:
                names = [n for _, n in await self.cache.claims(job.key, store.backend)]
            except Exception as exc:  # noqa: BLE001 - left behind, lapsed: harmless
                self._warn(exc)
        await self._delete(names)

    # -- the run's side ------------------------------------------------------------------
    def start(self) -> None:
        """Start renewing the claims held, every third of the lease."""
        self._renewing = asyncio.ensure_future(self._renew())

    async def close(self) -> None:
        """Stop renewing, and release every claim still held (jobs a stop left pending)."""
        if self._renewing is not None:
            async with self._lock:  # not mid-renewal: no put of it lands after the deletes
                self._renewing.cancel()
                await asyncio.gather(self._renewing, return_exceptions=True)
        held, self._held = list(self._held.values()), {}
        await self._delete([h.name for h in held])

    # -- the protocol --------------------------------------------------------------------
    def _take(self, store: Store, job: Job) -> _Held | None:
        """The claim held on `job` for `store`, no longer counted as held."""
        held = self._held.get((store.backend, job.key))
        if held is None or held.store is not store:
            return None
        return self._held.pop((store.backend, job.key))

    async def _claim(self, store: Store, job: Job) -> tuple[Claimed, float]:
        """Claim `job`: what came of it, and the other run's expiry when "theirs"."""
        key, backend = job.key, store.backend
        failed = 0
        for _ in range(_TRIES):
            try:
                held = await self._make(key, backend, store)
            except Exception as exc:  # noqa: BLE001 - a failing cache costs money, not the run
                # Once more (a store may answer a conflict while another run writes the
                # same claim), then the job is sent unclaimed, as without claims.
                failed += 1
                if failed == 2:
                    self._warn(exc)
                    return "mine", 0.0
                await self._sleep(FIRST_POLL)
                continue
            if isinstance(held, float):
                return "theirs", held
            if held is None:
                continue  # it changed while read: look again
            self._held[(backend, key)] = held
            if await self._restore(store, job):
                await self.settle(store, job, in_cache=True)
                return "restored", 0.0
            return "mine", 0.0
        # claims made and deleted faster than they can be read: wait a moment, then again
        return "theirs", self._clock() + FIRST_POLL

    async def _make(self, key: str, backend: str, store: Store) -> _Held | float | None:
        """One try: the claim made (held), another run's live claim's expiry, or None when
        the claims changed under the try."""
        first = claim_name(key, backend, 0)
        if await self.cache.create(first, self._body(store)):
            return _Held(first, 0, store)
        found = await self.cache.claims(key, backend)
        if not found:
            return None  # deleted since: no run holds it now
        generation, name = found[-1]
        claim = await self.cache.claim(name, generation)
        if claim is None:
            return None
        if claim.live(self._clock()) and (claim.run == self.run
                                          or claim.where != _where(store)):
            return claim.expires
        # lapsed (a crashed run's, or one that cannot be read): the next generation
        name = claim_name(key, backend, generation + 1)
        if await self.cache.create(name, self._body(store)):
            return _Held(name, generation + 1, store)
        return None  # another run took it over first

    async def _restore(self, store: Store, job: Job) -> bool:
        """Whether the job's image is in the cache now, restored into `store` (verified; a
        bad object is removed, as any restore does)."""
        try:
            found = await self.cache.entries(job.keys, store.backends)
        except Exception as exc:  # noqa: BLE001 - not seen now; looked at again
            self._warn(exc)
            return False
        if not found:
            return False
        self.transfers.index.update(found)
        return job.key in await cached.restore(self.transfers, store, [job])

    def _body(self, store: Store) -> bytes:
        return claim_body(self.run, self._clock() + self.lease, _where(store))

    async def _renew(self) -> None:
        while True:
            await self._sleep(self.lease / 3)
            async with self._lock:
                held = list(self._held.values())
                ended = await asyncio.gather(
                    *(self.cache.overwrite(h.name, self._body(h.store)) for h in held),
                    return_exceptions=True)
            for result in ended:
                if isinstance(result, Exception):
                    self._warn(result)

    async def _delete(self, names: list[str]) -> None:
        async with self._lock:
            ended = await asyncio.gather(*(self.cache.remove(n) for n in names),
                                         return_exceptions=True)
        for result in ended:
            if isinstance(result, Exception):
                self._warn(result)  # it lapses on its own

    def _warn(self, exc: BaseException) -> None:
        """Say once per run that a claim could not be made, read, renewed or deleted."""
        if not self._warned:
            self._warned = True
            self.transfers.warn(f"cache: a claim failed ({self.cache.describe(exc)}); "
                                "another run on this cache may pay for the same images")


def _where(store: Store) -> str:
    """Where a claim for `store` is made: the machine and the outputs folder, hashed."""
    place = f"{socket.gethostname()}\0{store.root.resolve()}"
    return hashlib.sha256(place.encode()).hexdigest()[:16]

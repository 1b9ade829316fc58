"""Moving images between an outputs folder and the shared cache: read through, write behind.

Read through (`restore`): for each job not done locally, an object of the cache made by one
of the store's backends is downloaded and verified before it is saved as done: its bytes
hash to the SHA-256 its name records, it decodes as the format and size the request asks
for (the same check a fresh image gets), and the request embedded in it is this job's.
An object that fails is reported, deleted (so the regenerated image replaces it; a
read-only cache keeps it, and the warning says so) and never saved; the job is then
generated as if the cache had not had it (by a run: `pull` leaves it missing).

Write behind (`Uploader`): every image a run saves is uploaded once it is on local disk,
read back from there and checked against its record first. An upload is retried; one that
still fails is a warning and a count, and the image stays done locally (the next run, or
`push`, uploads it). An image whose object is there already (another run made and uploaded
the same one) is counted as such. Once an upload is settled, the run's claim on the job (if
it holds one) is given up. `push` and `pull` are the same two halves run on their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TextIO

from ..errors import ApiError, ImagebatchError, printable
from ..planning.config import LOCAL_BACKEND
from ..planning.plan import Job
from ..providers import of
from ..storage import credentials, metadata
from ..storage.cache import Cache, Entry, backend_of
from ..storage.store import DONE, Record, Store
from .images import check_image

if TYPE_CHECKING:
    from .claims import Claims

#: Transfers in flight at once (downloads or uploads); object stores serve many at a time.
TRANSFERS = 16
UPLOAD_ATTEMPTS = 3  # an upload is tried this many times before it counts as failed
_BACKOFF = 0.5  # seconds before the second attempt, doubled for each one after
#: How an upload ended: written, found there already (the same bytes, by another run or
#: machine), skipped (the file changed since its record), or failed after every attempt.
Uploaded = Literal["uploaded", "there", "changed", "failed"]


def verify(entry: Entry, data: bytes, job: Job) -> str | None:
    """Why `data` (the object `entry`) is not job `job`'s image, or None when it is."""
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        return "its bytes do not match the SHA-256 recorded with it (corrupt or truncated)"
    if entry.ext != job.ext:
        return f"it is a .{entry.ext} image, the job asks for .{job.ext}"
    try:
        check_image(data, job.request, of(job.provider))
    except ApiError as exc:
        return exc.message
    try:
        body = metadata.extract(data)
    except metadata.MetadataError as exc:
        return f"its embedded request cannot be read ({exc})"
    if body is None:
        if credentials.has_manifest(data):
            return None  # provider-signed, kept byte for byte: its request is beside it
        return "it carries no embedded request (not an image imagebatch saved)"
    if body != job.body:
        return "it carries another job's request"
    return None


@dataclass
class Tally:
    """What the cache did for one store in a run."""

    restored: int = 0
    uploaded: int = 0
    upload_failed: int = 0
    already_there: int = 0  # uploads that found the very object there (another run's)
    rejected: int = 0  # objects found bad (corrupt, truncated, foreign), never saved
    removed: int = 0  # of those, the ones deleted from the cache (not on a read-only one)


@dataclass
class Transfers:
    """What the cache did over a whole run, store by store, and what it warned about."""

    cache: Cache
    err: TextIO
    by_store: dict[Store, Tally] = field(default_factory=dict)
    index: dict[str, list[Entry]] = field(default_factory=dict)
    # what becomes of a job none of whose objects is good, after its path: a run makes it,
    # `pull` (which sends nothing) leaves it missing
    instead: str = "is generated instead"

    def tally(self, store: Store) -> Tally:
        """The counters of `store` (made on first use)."""
        return self.by_store.setdefault(store, Tally())

    def warn(self, text: str) -> None:
        """One warning line on stderr, with no credential in it (a URL's userinfo or a
        secret's value, in a store's error text)."""
        print(f"warning: {printable(self.cache.scrub(text))}", file=self.err, flush=True)


async def load_index(transfers: Transfers, stores: Iterable[Store]) -> None:
    """List the cache once for every backend the stores count as done."""
    backends = {b for store in stores for b in store.backends}
    transfers.index = await transfers.cache.index(backends)


async def restore(transfers: Transfers, store: Store, jobs: Sequence[Job]) -> set[str]:
    """Restore what the cache has of `jobs` into `store`; the keys restored."""
    gate = asyncio.Semaphore(TRANSFERS)  # downloads in flight
    held = asyncio.Semaphore(2 * TRANSFERS)  # images between download and save: the memory
    restored: set[str] = set()
    tally = transfers.tally(store)

    async def one(job: Job) -> None:
        async with held:
            await first_good(job)

    async def first_good(job: Job) -> None:
        # a mixed pool's job is made by any of its requests (one per provider): each is
        # verified against the request it names, and saved as that request
        entries = [(sent, e) for sent in (job, *job.variants)
                   for e in transfers.index.get(sent.key, ()) if e.backend in store.backends]
        for number, (sent, entry) in enumerate(entries, 1):
            # each warning ends with what comes next: another object of the job, or (after
            # its last one) what becomes of the job
            then = ("trying its next object" if number < len(entries) else
                    f"{job.path} {transfers.instead}")
            started = time.monotonic()
            # Checking and saving run outside the download gate, so the next downloads
            # start while this image is written (`held` bounds the images in memory).
            async with gate:
                try:
                    data = await transfers.cache.get(entry)
                except Exception as exc:  # noqa: BLE001 - a download that fails is skipped
                    transfers.warn(f"cache: cannot download {entry.name}: "
                                   f"{transfers.cache.describe(exc)}; {then}")
                    continue
            problem = await asyncio.to_thread(_keep, store, entry, data, sent, started)
            if problem is None:
                restored.add(job.key)
                tally.restored += 1
                return
            tally.rejected += 1
            # deleted first, so that the warning says what really happened to it
            failure = await _discard(transfers, entry)
            if failure is None:
                tally.removed += 1
            fate = ("removed from the cache" if failure is None else
                    f"left in the cache, which refused to delete it ({failure})")
            transfers.warn(f"cache: {entry.name} is not the image of {job.path}: {problem}; "
                           f"{fate}; {then}")

    await asyncio.gather(*(one(j) for j in jobs
                           if any(k in transfers.index for k in j.keys)))
    return restored


def _keep(store: Store, entry: Entry, data: bytes, job: Job, started: float) -> str | None:
    """Verify a downloaded object and, when it is the job's image, save it as done (one
    thread hop for both); why it is not, or None once saved."""
    problem = verify(entry, data, job)
    if problem is None:
        store.restore(job, data, backend=entry.backend, seconds=time.monotonic() - started)
    return problem


async def _discard(transfers: Transfers, entry: Entry) -> str | None:
    """Forget a bad object and delete it from the cache: None once deleted, else why not."""
    with_key = transfers.index.get(entry.key, [])
    if entry in with_key:
        with_key.remove(entry)
        if not with_key:
            del transfers.index[entry.key]
    try:
        await transfers.cache.delete(entry)
    except Exception as exc:  # noqa: BLE001 - a bad object left behind is verified again
        return transfers.cache.describe(exc)
    return None


class Uploader:
    """Uploads saved images in the background: `submit` as each is saved, `close` to drain.

    Bounded: at most TRANSFERS uploads in flight and a queue of jobs (never of bytes), so
    memory does not grow with the run. Each image is read back from local disk and checked
    against its record, so only what is safely saved is ever uploaded.
    """

    def __init__(self, transfers: Transfers, claims: Claims | None = None) -> None:
        self.transfers = transfers
        self.claims = claims  # given up once each claimed image's upload is settled
        self._queue: asyncio.Queue[tuple[Store, Job, Record] | None] = asyncio.Queue()
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(TRANSFERS)]

    def submit(self, store: Store, job: Job, rec: Record) -> None:
        """Upload `job`'s image, recorded by `rec`, once the workers get to it."""
        self._queue.put_nowait((store, job, rec))

    async def close(self) -> None:
        """Wait until every submitted image is uploaded (or counted as failed)."""
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers)

    async def _work(self) -> None:
        while (item := await self._queue.get()) is not None:
            store, job, rec = item
            tally = self.transfers.tally(store)
            ended = await upload(self.transfers, store, job, rec)
            if ended == "uploaded":
                tally.uploaded += 1
            elif ended == "there":
                tally.already_there += 1
            elif ended == "failed":
                tally.upload_failed += 1
            if self.claims is not None:
                # the image is in the cache now (or will not be from this run): a run
                # waiting on the claim restores it, or claims the job and makes it
                await self.claims.settle(store, job, in_cache=ended in ("uploaded", "there"))


async def upload(transfers: Transfers, store: Store, job: Job, rec: Record) -> Uploaded:
    """Upload one saved image: "uploaded", "there" when the cache had that very object
    already, "changed" when the file changed on disk since its record (nothing sent),
    "failed" when every attempt failed (a warning)."""
    try:
        blob = await asyncio.to_thread(store.image_path(job).read_bytes)
    except (OSError, ImagebatchError) as exc:
        transfers.warn(f"cache: cannot read {job.path} to upload it: {exc}")
        return "failed"
    if hashlib.sha256(blob).hexdigest() != rec.sha256:
        return "changed"  # replaced since (a later run's): that run uploads its own
    reason = ""
    for attempt in range(UPLOAD_ATTEMPTS):
        if attempt:
            await asyncio.sleep(_BACKOFF * 2 ** (attempt - 1))
        try:
            written = await transfers.cache.put(rec.key, rec.backend, blob, job.ext)
        except Exception as exc:  # noqa: BLE001 - counted and named; the run goes on
            reason = transfers.cache.describe(exc)
            continue
        return "uploaded" if written else "there"
    transfers.warn(f"cache: upload of {job.path} failed after {UPLOAD_ATTEMPTS} attempts "
                   f"({reason}); it stays done here, `imagebatch push` uploads it later")
    return "failed"


def missing(transfers: Transfers, store: Store, jobs: Sequence[Job]
            ) -> list[tuple[Job, Record]]:
    """The jobs done in `store` whose image the cache has none of (by any of its backends):
    what a run or `push` uploads."""
    out: list[tuple[Job, Record]] = []
    for st in store.check(jobs):
        if st.state != DONE or st.record is None or st.record.sha256 is None:
            continue
        have = transfers.index.get(st.record.key, ())
        if any(e.backend in store.backends for e in have):
            continue
        out.append((st.job, st.record))
    return out


def elsewhere(cache: Cache, jobs: Sequence[Job], backends: Iterable[str],
              prefix: str) -> list[str]:
    """Where else the cache has images of `jobs` (ones it has none of by `backends`): one
    line for each other backend that made some, saying how many and what to set to use
    them (from a listing of its folder; nothing is read). `prefix` names the variable."""
    keys = {k for j in jobs for k in j.keys}
    here = ("the embedded server" if set(backends) == {LOCAL_BACKEND} else
            ", ".join(sorted(backends)))
    lines = []
    for folder, held in cache.elsewhere(keys, backends).items():
        count = sum(1 for j in jobs if any(k in held for k in j.keys))
        name = backend_of(folder)
        if name == LOCAL_BACKEND:
            maker, then = "the embedded server", "pull with --local to pull them"
        elif name is not None:
            maker, then = name, f"set {prefix}_URL={name} to pull them"
        else:  # a URL with a port: its host is in the folder's name, not the whole URL
            maker = f"another service (cache folder {folder})"
            then = f"set {prefix}_URL to that service's URL to pull them"
        lines.append(f"the cache holds {count} of the {len(jobs)} missing image(s) made by "
                     f"{maker}, none by {here}; {then}")
    return lines

"""The only writer: atomic image files, results.jsonl, summary.json; and the one place that
says which jobs are done.

Layout under `<out>/<plan name>/`: `images/<job.path>`, `results.jsonl` (one line per
finished job, appended and fsynced as each finishes), `summary.json` (the last run).

What is done is decided here and nowhere else: `job_states` (and `Store.check` during a
run) give each job's state; `run` skips, `status` counts, post-processing draws and
`merge` copies by it. See `Ledger.state` for the rule.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then the user's care
    fcntl = None  # type: ignore[assignment]

from ..errors import StoreError
from ..planning.config import LOCAL_BACKEND
from ..planning.plan import TMP_PREFIX, Job
from . import credentials, metadata
from .credentials import SignerConfig

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
IMAGES = "images"

#: A job's states, as `job_states` gives them (and `status` prints them).
DONE = "done"
FAILED = "failed"
PENDING = "pending"
# TMP_PREFIX (from plan, which keeps image paths clear of it): leftovers of a killed run
# carry this prefix and are removed by the next run, once it holds the folder's lock.


@dataclass(frozen=True, slots=True)
class Record:
    """One line of results.jsonl: how one job finished."""

    key: str
    path: str
    status: str  # ok | failed
    backend: str
    attempts: int
    error: str | None
    sha256: str | None
    bytes: int | None
    seconds: float
    created: int | None
    # The image file's modification time as recorded (ok records; older lines lack it):
    # with `bytes`, what a done check compares before it reads the file.
    mtime_ns: int | None = None
    member: str | None = None  # the pool member's prefix (DIFFUSION2), for a pool's runs
    seed: int | None = None  # the seed the provider said it used (Stability's `seed` header)
    # Where the image came from when it was not made here: "cache" for one restored from
    # the shared cache (older lines, and images made by this run, have none).
    source: str | None = None
    # A failure that a retry of the same request cannot change (the request refused as it
    # is, or its image withheld by the provider's filter for a fixed seed): later runs do
    # not send it again until the request changes (a new key) or `run --retry-failed`.
    final: bool = False
    # What is off about an image kept anyway: made at another size than asked, one the
    # provider chose (about one megapixel); `status` lists these.
    flag: str | None = None
    # The image's Content Credentials, checked as it was saved: trusted, valid (intact, the
    # signer on no trust list), invalid or unchecked (no c2pa extra); None: it has none.
    credential: str | None = None
    # Who signed it: "imagebatch" (the team's certificate) or "provider" (it arrived signed
    # and was kept byte for byte, its request in `<image>.request.json` beside it).
    signed_by: str | None = None

    def to_line(self) -> builtins.bytes:
        """The JSON line, newline included (`member`, `seed`, `source`, `final`, `flag`,
        `credential` and `signed_by` only when set)."""
        doc = asdict(self)
        for optional in ("member", "seed", "source", "flag", "credential", "signed_by"):
            if doc[optional] is None:
                del doc[optional]
        if not doc["final"]:
            del doc["final"]
        return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Record | None:
        """A record from a parsed line, or None when the line is not one of ours."""
        try:
            return cls(
                key=str(doc["key"]), path=str(doc["path"]), status=str(doc["status"]),
                backend=str(doc["backend"]), attempts=int(doc.get("attempts") or 0),
                error=doc.get("error"), sha256=doc.get("sha256"), bytes=doc.get("bytes"),
                seconds=float(doc.get("seconds") or 0.0), created=doc.get("created"),
                mtime_ns=_int_or_none(doc.get("mtime_ns")),
                member=doc.get("member") if isinstance(doc.get("member"), str) else None,
                seed=_int_or_none(doc.get("seed")),
                source=doc.get("source") if isinstance(doc.get("source"), str) else None,
                final=doc.get("final") is True,
                flag=doc.get("flag") if isinstance(doc.get("flag"), str) else None,
                credential=_str_or_none(doc.get("credential")),
                signed_by=_str_or_none(doc.get("signed_by")),
            )
        except (KeyError, TypeError, ValueError, OverflowError):  # e.g. "attempts": 1e400
            return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (some filesystems); the file itself is already synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, create_only: bool = False) -> None:
    """Write `data` to `path` so that `path` is either absent, the old file, or complete;
    with `create_only`, a file already at `path` is never replaced (FileExistsError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not create_only:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: a hard link never replaces
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: replace, as the caller
                os.replace(tmp, path)  # looked first; a race there is the one left open
            with contextlib.suppress(OSError):
                tmp.unlink()  # the link left the temporary name behind
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_error(path: Path, exc: OSError) -> StoreError:
    """The StoreError for a failed write of `path`: "cannot write PATH: reason"."""
    return StoreError(f"cannot write {path}: {exc.strerror or exc}")


def write_file(path: Path, data: bytes) -> None:
    """atomic_write, with a failure reported as a StoreError (see write_error)."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise write_error(path, exc) from None


def sha256_file(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks; OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stamp(path: Path) -> int:
    """Set `path`'s mtime 1 ns back from the one its writing gave it; return the mtime now.

    The recorded mtime must be one no later write can give the file: a write in the same
    clock tick (filesystem times are coarse, often a few ms) would keep the mtime it has,
    and a same-size change there would pass the cheap done check unseen. Writes only set
    times at or after the first one, never 1 ns before it (on a coarser filesystem that
    value rounds down to the tick before, still unreachable).
    """
    st = os.stat(path)
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 1))
    except OSError:
        return st.st_mtime_ns  # times not settable here: the plain mtime still serves
    return os.stat(path).st_mtime_ns


def read_records(path: Path) -> Iterator[Record]:
    """Every well-formed record of a results.jsonl; a torn or foreign line is skipped."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the `with fh` below
    except FileNotFoundError:
        return
    except OSError as exc:  # a folder in its place, --out a file, no permission
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        for line in fh:
            try:
                doc = json.loads(line)
            except (ValueError, RecursionError):
                continue  # e.g. the last line of a run killed mid-write, or [[[[... garbage
            if isinstance(doc, dict) and (rec := Record.from_dict(doc)) is not None:
                yield rec


def open_locked(results: Path) -> BinaryIO:
    """`results` (a results.jsonl) open for appending, holding its folder's lock, or refuse.

    Two writers into one folder (two runs, or a merge into a folder a run is filling) would
    sweep each other's live temp files, losing paid-for images, and pay twice for every
    job. The lock is an flock on this open file, so it goes when the handle or the process
    does: a killed run never leaves it behind.
    """
    try:
        handle = open(results, "ab")  # noqa: SIM115 - the caller holds it, then closes it
    except OSError as exc:
        raise StoreError(f"cannot write to {results.parent}: {exc.strerror or exc}") from None
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(f"another imagebatch run is writing to {results.parent}; wait for it "
                         "to finish, or give this one another --out") from None
    except OSError:
        pass  # a filesystem without locks (some network mounts): go on as before
    return handle


@dataclass(frozen=True, slots=True)
class JobState:
    """Where one job stands: DONE, FAILED or PENDING, and the record that says so."""

    job: Job
    state: str  # done | failed | pending
    record: Record | None  # done: its ok record; failed: the failure; pending: None
    # whether deciding read and hashed the image (its size matched but its mtime did not,
    # it was never recorded, or verify was asked): what a check cost
    hashed: bool = False
    # failed with an answer a retry cannot change (under every key it has): `run` does not
    # send it again unless asked (--retry-failed, --force)
    final: bool = False

    @property
    def reason(self) -> str | None:
        """Why the job failed (failed only)."""
        if self.state != FAILED or self.record is None:
            return None
        return self.record.error or "failed"

    @property
    def flag(self) -> str | None:
        """What is off about a done job's image, kept anyway (another size than asked)."""
        return self.record.flag if self.state == DONE and self.record is not None else None


class Ledger:
    """The records of one results.jsonl, indexed to judge jobs against a backend.

    `backend` is one backend name, or a pool's set of member backends (a job recorded ok by
    any of them is done); None judges against whichever backend made each image (what
    `merge` does: it combines outputs made anywhere and keeps each record's backend).
    """

    def __init__(self, images: Path, backend: str | Iterable[str] | None) -> None:
        self.images = images
        self.backends: frozenset[str] | None = (
            None if backend is None else
            frozenset({backend}) if isinstance(backend, str) else frozenset(backend))
        self._latest_ok: dict[str, Record] = {}  # per key, any backend
        # path -> the key whose image was written there last: an older ok record for the
        # path (a prompt changed, then changed back; another manifest of the same name)
        # does not describe the file any more.
        self._written: dict[str, str] = {}
        self._latest_fail: dict[str, Record] = {}  # per key, this backend, after its last ok
        self._images_real: Path | None = None  # images/ resolved, at the first check

    def add(self, rec: Record) -> None:
        """Take in one more record (records come in the order they were written)."""
        if rec.status == "ok":
            self._latest_ok[rec.key] = rec
            self._latest_fail.pop(rec.key, None)
            self._written[rec.path] = rec.key
        elif self.backends is None or rec.backend in self.backends:
            self._latest_fail[rec.key] = rec

    def state(self, job: Job, *, verify: bool = False) -> JobState:
        """`job`'s state: the definition of done; a job planned for several providers (a
        mixed pool) is done when any of its keys is (see _state), else failed or pending by
        its first key that says so.
        """
        if not job.variants:
            return self._state(job, verify)
        found = [self._state(j, verify) for j in (job, *job.variants)]
        best = next((st for st in found if st.state == DONE),
                    next((st for st in found if st.state == FAILED), found[0]))
        # held back only when every provider's request got an answer that cannot change
        return JobState(job, best.state, best.record, any(st.hashed for st in found),
                        final=all(st.final for st in found))

    def _state(self, job: Job, verify: bool) -> JobState:
        """One key's state: the definition of done.

        DONE: the latest ok record of the job's key names this backend and the job's path;
        it is also the last ok record written to that path; and the file there is, inside
        images/ (symbolic links resolved), a regular file of the recorded size whose mtime
        is the recorded one, or, when the mtime differs or was not recorded, whose SHA-256 is
        the recorded one (a `touch` keeps a job done; a same-size change does not). With
        `verify`, the SHA-256 is compared whatever the mtime. An older ok record stands even
        after later failures (a failed --force leaves the image it would have replaced).
        FAILED: not done, and this backend's latest record of the key after its last ok is a
        failure (`final` when that record is). PENDING: neither.
        """
        rec = self._latest_ok.get(job.key)
        hashed = False
        if (rec is not None and rec.path == job.path
                and (self.backends is None or rec.backend in self.backends)
                and self._written.get(job.path) == job.key):
            intact, hashed = self._intact(job.path, rec, verify)
            if intact:
                return JobState(job, DONE, rec, hashed)
        fail = self._latest_fail.get(job.key)
        if fail is not None:
            return JobState(job, FAILED, fail, hashed, final=fail.final)
        return JobState(job, PENDING, None, hashed)

    def _file(self, rel: str) -> tuple[str, os.stat_result] | None:
        """images/`rel` when it is a regular file inside images/ (links resolved): (its real
        path, its stat); else None. Only the part below images/ is walked: a link can only
        lead out of images/ from there."""
        if self._images_real is None:
            self._images_real = self.images.resolve()
        base = str(self._images_real)
        path = base
        try:
            for part in rel.split("/"):
                path = os.path.join(path, part)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode) or part in ("", ".", ".."):
                    real = os.path.realpath(os.path.join(base, rel), strict=True)
                    if os.path.commonpath([real, base]) != base:
                        return None
                    return real, os.stat(real)
        except (OSError, ValueError):  # absent, unreadable, a link loop, or a path not ours
            return None
        return path, st

    def _intact(self, rel: str, rec: Record, verify: bool) -> tuple[bool, bool]:
        """(whether images/`rel` is the image `rec` recorded, whether it was hashed)."""
        found = self._file(rel)
        if found is None:
            return False, False
        real, st = found
        if not stat.S_ISREG(st.st_mode):
            return False, False
        if rec.bytes is not None and st.st_size != rec.bytes:
            return False, False  # another size is another file: no need to read it
        if rec.sha256 is None:
            return True, False  # a line of no known hash: its size is all there is to compare
        if not verify and rec.mtime_ns is not None and st.st_mtime_ns == rec.mtime_ns:
            return True, False
        try:
            return sha256_file(Path(real)) == rec.sha256, True
        except OSError:
            return False, True


def job_states(
    jobs: Iterable[Job], root: Path, backend: str | Iterable[str] | None, *,
    verify: bool = False,
) -> list[JobState]:
    """Each job's state in the outputs folder `root` (`<out>/<name>`), judged against `backend`.

    The one definition of done (`Ledger.state`), read from `root`'s results.jsonl and
    images/; nothing is written. `backend` is the backend name a run records (a base URL, or
    "local"), or a pool's member backends; None takes whichever backend made each image.
    `verify` hashes every image instead of trusting a matching size and mtime. `run` skips the DONE
    jobs, `status` counts these states, the contact sheet and index.html draw them, `merge`
    copies by them.
    """
    ledger = Ledger(Path(root) / IMAGES, backend)
    for rec in read_records(Path(root) / RESULTS):
        ledger.add(rec)
    return [ledger.state(job, verify=verify) for job in jobs]


class Store:
    """Everything one plan writes, under `<out>/<name>/`, for one backend or a pool.

    A pool's store is given its members (prefix -> backend name): each record names the
    member's backend and prefix, and a job recorded ok by any member's backend is done.
    """

    def __init__(self, out: Path, name: str, backend: str, *,
                 members: Mapping[str, str] | None = None,
                 signer: SignerConfig | None = None) -> None:
        self.root = Path(out) / name
        self.signer = signer  # signs every image made here (not one that arrives signed)
        self.images = self.root / IMAGES
        self.backend = backend
        self._members = dict(members or {})
        self._backends = frozenset(self._members.values()) or frozenset({backend})
        self._lock = threading.Lock()
        self._results: Any = None  # binary append handle, opened by prepare()
        self._ledger = Ledger(self.images, self._backends)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, backend={self.backend!r})"

    @property
    def backends(self) -> frozenset[str]:
        """The backends whose images count as done here: a pool's members, or the one."""
        return self._backends

    # -- reading -----------------------------------------------------------------------
    def load(self) -> None:
        """Index results.jsonl for the done checks (see Ledger.state)."""
        self._ledger = Ledger(self.images, self._backends)
        for rec in read_records(self.root / RESULTS):
            self._ledger.add(rec)

    def image_path(self, job: Job) -> Path:
        """Where the image of `job` lives; StoreError when that is outside images/."""
        path = (self.images / job.path).resolve()
        images = self.images.resolve()
        if not path.is_relative_to(images):
            raise StoreError(
                f"image path {job.path!r} leads outside {self.images} (to {path}, through a "
                "symbolic link): images are written only inside images/")
        return path

    def cannot_write(self, job: Job) -> str | None:
        """Why `job`'s image could not be saved where it goes, or None; sends nothing.

        Asked before the job's request is sent, so an image that could not be kept is never
        paid for: a path leading out of images/ (a symbolic link on the way), a folder where
        the file goes, or a file where a folder goes. (A disk that refuses the write is found
        at the write itself, and stops the run.)
        """
        try:
            self.image_path(job)
        except StoreError as exc:
            return str(exc)
        path = self.images / job.path
        if path.is_dir():
            return f"cannot write {path}: it is a folder"
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"cannot write {path}: {parent} is not a folder"
                break
        return None

    def is_done(self, job: Job) -> bool:
        """Whether `job` is done (see Ledger.state)."""
        return self._ledger.state(job).state == DONE

    def state(self, job: Job) -> tuple[str, Record | None]:
        """('done' | 'failed' | 'pending', the record that says so); see Ledger.state."""
        st = self._ledger.state(job)
        return st.state, st.record

    def check(self, jobs: Iterable[Job], *, verify: bool = False) -> list[JobState]:
        """Each job's state, as job_states gives it; images found intact by their hash get
        their mtime recorded anew, so the next check compares times instead of reading them.

        Needs prepare() (it may append records).
        """
        states = [self._ledger.state(job, verify=verify) for job in jobs]
        for st in states:
            if st.state != DONE or not st.hashed or st.record is None:
                continue
            try:
                mtime = os.stat(self.images / st.job.path).st_mtime_ns
            except OSError:
                continue
            if mtime != st.record.mtime_ns:
                try:
                    self._append(replace(st.record, mtime_ns=mtime))
                except OSError as exc:
                    raise write_error(self.root / RESULTS, exc) from None
        return states

    # -- writing -----------------------------------------------------------------------
    def prepare(self) -> int:
        """Create the folders, remove temp files a killed run left; return how many were removed."""
        removed = 0
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write to {self.root}: {exc.strerror or exc}") from None
        results = self.root / RESULTS
        handle = open_locked(results)
        try:
            # Only the holder of the lock may sweep temp files: another run's are live.
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    if name.startswith(TMP_PREFIX):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
            # A kill mid-line leaves a torn last line: end it so the next record stands alone.
            if handle.tell() > 0:
                with open(results, "rb") as rd:
                    rd.seek(-1, os.SEEK_END)
                    if rd.read(1) != b"\n":
                        handle.write(b"\n")
                        handle.flush()
        except BaseException as exc:
            handle.close()
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write to {self.root}: {exc.strerror or exc}") from None
            raise
        self._results = handle
        return removed


    def _append(self, rec: Record) -> None:
        line = rec.to_line()
        with self._lock:
            if self._results is None:
                raise StoreError("store used before prepare()")
            self._results.write(line)
            self._results.flush()
            os.fsync(self._results.fileno())
            self._ledger.add(rec)

    def save(
        self, job: Job, data: bytes, *, attempts: int, seconds: float, created: int | None,
        member: str | None = None, seed: int | None = None, flag: str | None = None,
    ) -> Record:
        """Embed the request and the AI marker, sign (with a signer), write the image
        atomically, then record it ok (in that order); `member` is the pool member that made
        it, `seed` the seed its provider said it used, `flag` what is off about it (another
        size than asked). An image that arrives with Content Credentials is written byte for
        byte instead (any change would break its signature), its request beside it."""
        try:
            path = self.image_path(job)
            blob, cred, signed_by = self._finished(job, data, self._backend_of(member))
            self._keep_request(path, job, kept=signed_by == "provider")
            atomic_write(path, blob)
            rec = Record(
                key=job.key, path=job.path, status="ok", backend=self._backend_of(member),
                attempts=attempts, error=None, sha256=hashlib.sha256(blob).hexdigest(),
                bytes=len(blob), seconds=round(seconds, 3), created=created, mtime_ns=stamp(path),
                member=member, seed=seed, flag=flag,
                credential=None if cred is None else cred.state, signed_by=signed_by,
            )
            self._append(rec)
        except OSError as exc:
            raise write_error(self.images / job.path, exc) from None
        return rec

    def _finished(self, job: Job, data: bytes, backend: str
                  ) -> tuple[bytes, credentials.Credential | None, str | None]:
        """(the bytes to write, their credential as checked, who signed them)."""
        arrived = credentials.read(data)
        if arrived is not None:
            # The provider's signature covers these exact bytes: nothing may be added.
            return data, arrived, "provider"
        blob = metadata.embed(data, job.body)
        if self.signer is None:
            return blob, None, None
        request = job.request
        model = str(request.get("model") or job.provider)
        where = "the embedded server" if backend == LOCAL_BACKEND else job.provider
        prompt = request.get("prompt")
        blob = credentials.sign_original(
            blob, metadata.format_of(blob), self.signer, title=job.path.rsplit("/", 1)[-1],
            job_key=job.key, agent=f"{model} ({where})",
            prompt=prompt if isinstance(prompt, str) else None)
        return blob, credentials.read(blob), "imagebatch"

    def _keep_request(self, path: Path, job: Job, *, kept: bool) -> None:
        """Write the request beside an image kept byte for byte; remove an older one when
        the request is embedded (it would describe another image)."""
        side = metadata.sidecar(path)
        if kept:
            atomic_write(side, job.body.encode("utf-8"))
        elif side.exists():
            side.unlink()

    def restore(self, job: Job, blob: bytes, *, backend: str, seconds: float) -> Record:
        """Write an image restored from the cache (already verified, request embedded) as
        `backend` made it, atomically, then record it ok with source "cache"."""
        if backend not in self._backends:
            raise StoreError(f"an image by {backend} cannot be done here ({self.backend})")
        try:
            path = self.image_path(job)
            cred = credentials.read(blob)
            # a provider-signed image (no request inside: it is kept byte for byte)
            kept = cred is not None and metadata.extract(blob) is None
            self._keep_request(path, job, kept=kept)
            atomic_write(path, blob)
            rec = Record(
                key=job.key, path=job.path, status="ok", backend=backend, attempts=0,
                error=None, sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob),
                seconds=round(seconds, 3), created=None, mtime_ns=stamp(path), source="cache",
                credential=None if cred is None else cred.state,
                signed_by=None if cred is None else "provider" if kept else "imagebatch",
            )
            self._append(rec)
        except OSError as exc:
            raise write_error(self.images / job.path, exc) from None
        return rec

    def fail(
        self, job: Job, error: str, *, attempts: int, seconds: float, member: str | None = None,
        final: bool = False,
    ) -> Record:
        """Record that `job` failed (its old image, if any, is left alone); `member` is the
        pool member of its last attempt; `final` when a retry could not change the answer."""
        rec = Record(
            key=job.key, path=job.path, status="failed", backend=self._backend_of(member),
            attempts=attempts, error=error, sha256=None, bytes=None, seconds=round(seconds, 3),
            created=None, member=member, final=final,
        )
        try:
            self._append(rec)
        except OSError as exc:
            raise write_error(self.root / RESULTS, exc) from None
        return rec

    def _backend_of(self, member: str | None) -> str:
        return self._members[member] if member is not None else self.backend

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write summary.json atomically; return its path."""
        path = self.root / SUMMARY
        write_file(path, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode())
        return path

    def close(self) -> None:
        """Close results.jsonl."""
        with self._lock:
            if self._results is not None:
                self._results.close()
                self._results = None


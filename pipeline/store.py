"""The only writer: atomic image files, results.jsonl, summary.json, and what is done.

Layout under `<out>/<plan name>/`: `images/<job.path>`, `results.jsonl` (one line per
finished job, appended and fsynced as each finishes), `summary.json` (the last run).
A job is done when its image is on disk and the latest `ok` record of its key names the
same backend and path (and the file still has the recorded size).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then the user's care
    fcntl = None  # type: ignore[assignment]

from pipeline import metadata
from pipeline.errors import StoreError
from pipeline.plan import TMP_PREFIX, Job

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
IMAGES = "images"
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
    member: str | None = None  # the pool member's prefix (DIFFUSION2), for a pool's runs

    def to_line(self) -> builtins.bytes:
        """The JSON line, newline included (`member` only when there is one)."""
        doc = asdict(self)
        if doc["member"] is None:
            del doc["member"]
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
                member=doc.get("member") if isinstance(doc.get("member"), str) else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError):  # e.g. "attempts": 1e400
            return None


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent, the old file, or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
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


class Store:
    """Everything one plan writes, under `<out>/<name>/`, for one backend or a pool.

    A pool's store is given its members (prefix -> backend name): each record names the
    member's backend and prefix, and a job recorded ok by any member's backend is done.
    """

    def __init__(self, out: Path, name: str, backend: str, *,
                 members: Mapping[str, str] | None = None) -> None:
        self.root = Path(out) / name
        self.images = self.root / IMAGES
        self.backend = backend
        self._members = dict(members or {})
        self._backends = frozenset(self._members.values()) or frozenset({backend})
        self._lock = threading.Lock()
        self._results: Any = None  # binary append handle, opened by prepare()
        self._latest_ok: dict[str, Record] = {}
        # path -> the key whose image was written there last: an older ok record for the path
        # (a prompt changed, then changed back) does not describe the file any more, even when
        # the sizes happen to match.
        self._written: dict[str, str] = {}
        self._latest_fail: dict[str, Record] = {}  # per key, this backend, after its last ok

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, backend={self.backend!r})"

    # -- reading -----------------------------------------------------------------------
    def load(self) -> None:
        """Index results.jsonl: the latest ok record per key, and later failures."""
        self._latest_ok.clear()
        self._latest_fail.clear()
        self._written.clear()
        for rec in read_records(self.root / RESULTS):
            self._index(rec)

    def _index(self, rec: Record) -> None:
        if rec.status == "ok":
            self._latest_ok[rec.key] = rec
            self._latest_fail.pop(rec.key, None)
            self._written[rec.path] = rec.key
        elif rec.backend in self._backends:
            self._latest_fail[rec.key] = rec

    def image_path(self, job: Job) -> Path:
        """Where the image of `job` lives."""
        path = (self.images / job.path).resolve()
        if not path.is_relative_to(self.images.resolve()):
            raise StoreError(f"image path {job.path!r} leaves {self.images}")
        return path

    def is_done(self, job: Job) -> bool:
        """Image on disk and the latest ok record of the key has this backend and path."""
        rec = self._latest_ok.get(job.key)
        if rec is None or rec.backend not in self._backends or rec.path != job.path:
            return False
        if self._written.get(job.path) != job.key:
            return False
        try:
            size = os.stat(self.images / job.path).st_size
        except OSError:
            return False
        return rec.bytes is None or size == rec.bytes

    def state(self, job: Job) -> tuple[str, Record | None]:
        """('done' | 'failed' | 'pending', the record that says so)."""
        if self.is_done(job):
            return "done", self._latest_ok[job.key]
        fail = self._latest_fail.get(job.key)
        if fail is not None:
            return "failed", fail
        return "pending", None

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
            self._index(rec)

    def save(
        self, job: Job, data: bytes, *, attempts: int, seconds: float, created: int | None,
        member: str | None = None,
    ) -> Record:
        """Embed the request, write the image atomically, then record it ok (in that order);
        `member` is the pool member that made it."""
        try:
            blob = metadata.embed(data, job.body)
            path = self.image_path(job)
            atomic_write(path, blob)
            rec = Record(
                key=job.key, path=job.path, status="ok", backend=self._backend_of(member),
                attempts=attempts, error=None, sha256=hashlib.sha256(blob).hexdigest(),
                bytes=len(blob), seconds=round(seconds, 3), created=created, member=member,
            )
            self._append(rec)
        except OSError as exc:
            raise write_error(self.images / job.path, exc) from None
        return rec

    def fail(
        self, job: Job, error: str, *, attempts: int, seconds: float, member: str | None = None
    ) -> Record:
        """Record that `job` failed (its old image, if any, is left alone); `member` is the
        pool member of its last attempt."""
        rec = Record(
            key=job.key, path=job.path, status="failed", backend=self._backend_of(member),
            attempts=attempts, error=error, sha256=None, bytes=None, seconds=round(seconds, 3),
            created=None, member=member,
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


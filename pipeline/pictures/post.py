"""Post-processing over disk: thumbnails, contact sheets and index.html for one output folder.

Reads `results.jsonl` and `images/`, writes `thumbs/`, `contact-sheet*.png` and `index.html`
under the same root. Pure work (pixels, layout, HTML) lives in imaging.py and report.py.
What each job shows (its image, a failure, or nothing yet) is its state as
`store.job_states` gives it for a backend, so the pages show what `status` lists.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any, cast

from PIL import Image

from ..errors import Interrupted
from ..planning.plan import TMP_PREFIX, Plan, image_stem
from ..storage import picks
from ..storage.store import (
    DONE,
    IMAGES,
    PENDING,
    job_states,
    write_error,
    write_file,
)
from . import imaging, report
from .imaging import FAILED, MISSING, OK, Entry

THUMBS = "thumbs"
INDEX = "index.html"
SHEET = "contact-sheet.png"
_SHEET_PAGE = re.compile(r"contact-sheet(?:-(\d+))?\.png")
#: Below this many thumbnails to make, starting worker processes costs more than it saves:
#: forked from this process (a single-threaded one), 12 thumbnails of 1 MP take 0.16 s on two
#: workers against 0.22 s alone.
PARALLEL_MIN = 12
#: The same where workers come from a forkserver (a threaded process, as `run` is): each pool
#: then starts an interpreter and its workers import Pillow and imagebatch, about 0.6 CPU-s.
#: Measured on 1 MP thumbnails, two workers against one process: 12 in 0.44 s against 0.22 s,
#: 24 in 0.61 s against 0.51 s, 48 in 0.85 s against 0.91 s.
PARALLEL_MIN_SPAWNED = 48
#: PNG zlib level for sheets: 1 is several times faster than 6 and only slightly larger
#: on photographic thumbnails.
SHEET_COMPRESS = 1
#: How often waiting for thumbnail workers looks for a stop request, in seconds.
STOP_POLL = 0.05
INTERRUPTED = "interrupted; run the same command again to finish"


class Stop:
    """A request to stop post-processing: set by a signal handler, read at safe points.

    A plain flag, no lock: setting it is safe from a signal handler, even one that runs
    while the main thread is inside the work it interrupts.
    """

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        """Ask the work to stop at its next safe point."""
        self.requested = True

    def check(self) -> None:
        """Raise Interrupted when a stop was asked for."""
        if self.requested:
            raise Interrupted(INTERRUPTED)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """While the block runs, SIGINT and SIGTERM ask it to stop instead of ending the process.

    For the main thread of `sheet` and `merge`; the work raises Interrupted (exit 130) at
    its next safe point. After a stop both signals stay ignored until the process exits, so
    a second Ctrl-C cannot turn the orderly exit into death by signal. Outside the main
    thread signals cannot be caught: the Stop is never set there.
    """
    stop = Stop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_IGN if stop.requested else old)


@dataclass(frozen=True, slots=True)
class PostResult:
    """What build_all did."""

    thumbs_made: int
    thumbs_kept: int
    sheets: tuple[Path, ...]
    index: Path
    missing: int  # jobs with nothing to show: failed or not made yet
    seconds: float
    pages: tuple[imaging.Page, ...] = ()  # the sheets' geometry: where each job's cell is


def sheet_name(number: int) -> str:
    """contact-sheet.png for page 1, contact-sheet-N.png after it."""
    return SHEET if number == 1 else f"contact-sheet-{number}.png"


def thumb_rel(image_path: str) -> str:
    """The thumbnail of images/<image path>, relative to the output root: thumbs/ mirrors
    images/ with `.jpg` for the image's extension (`fox/7.png` -> `thumbs/fox/7.jpg`).

    The one place the name is made: the sheets, index.html and the review page all call it.
    The plan refuses two images that differ only in their extension, so names never clash.
    """
    return f"{THUMBS}/{image_stem(image_path)}.jpg"


def _legacy_thumb_rel(image_path: str) -> str:
    """The name thumbnails had before (`thumbs/fox/7.png.jpg`): swept, never read."""
    return f"{THUMBS}/{image_path}.jpg"


def sweep_legacy_thumbs(paths: Iterable[str], root: Path) -> int:
    """Delete the old-named thumbnails of these images; how many were there.

    Nothing reads them any more, so one left behind (a read-only folder) harms nothing: it
    is only disk space. A name that is also a current thumbnail's is kept.
    """
    paths = list(paths)
    current = {thumb_rel(p) for p in paths}
    removed = 0
    for path in paths:
        old = _legacy_thumb_rel(path)
        if old in current:
            continue
        try:
            (root / old).unlink()
        except FileNotFoundError:
            continue
        except OSError:  # read-only or not a file: left as it is, it is never read
            continue
        removed += 1
    return removed


def entries_for(plan: Plan, root: Path, backend: str | Iterable[str] | None = None
                ) -> list[Entry]:
    """Each job of `plan` as the pages show it: its `job_states` state against `backend`
    (done: ok, failed: failed with its reason, pending: missing). None: any backend."""
    out: list[Entry] = []
    for st in job_states(plan.jobs, root, backend):
        if st.state == DONE:
            out.append(Entry(st.job, OK))
        elif st.state == PENDING:
            out.append(Entry(st.job, MISSING))
        else:
            out.append(Entry(st.job, FAILED, st.reason))
    return out


def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=imaging.JPEG_QUALITY, optimize=False)
    return buf.getvalue()


def _thumb_tmp(dest: Path, pid: int) -> Path:
    """The temp file process `pid` writes `dest` through."""
    return dest.parent / f"{TMP_PREFIX}{dest.name}.{pid}"


def _save_jpeg(data: bytes, dest: Path, mtime_ns: int) -> None:
    """Temp file + os.replace: a thumbnail is never seen half written; StoreError on failure.

    The thumbnail takes its image's mtime: any other mtime on either side (a newer image,
    or one replaced by an older copy) means it is stale. No fsync: thumbnails are derived
    data, remade whenever they do not match.
    """
    tmp = _thumb_tmp(dest, os.getpid())
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(data)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise write_error(dest, exc) from None


def make_thumb(task: tuple[str, str, int]) -> tuple[int, int] | str:
    """Worker: (image, thumb, longest) -> the thumbnail's size, or why the image is unreadable.

    Failing to write the thumbnail is not the image's fault: that raises StoreError.
    """
    src, dest, longest = task
    try:
        mtime = os.stat(src).st_mtime_ns  # before reading: a change meanwhile shows next time
        with Image.open(src) as img:
            thumb = imaging.thumbnail(img, longest)
        data = _encode_jpeg(thumb)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"image unreadable: {exc}"
    _save_jpeg(data, Path(dest), mtime)
    return thumb.size


def _current_thumb(image: Path, thumb: Path, longest: int) -> tuple[int, int] | None:
    """The size of `thumb` when it was made from `image` as it is now, at `longest`; else None."""
    try:
        if thumb.stat().st_mtime_ns != image.stat().st_mtime_ns:
            return None
        with Image.open(thumb) as t:
            size: tuple[int, int] = t.size
        if max(size) == longest:
            return size
        if max(size) < longest:  # a small image is never enlarged: check it is that small
            with Image.open(image) as im:
                return size if imaging.fit_size(im.size, (longest, longest)) == size else None
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return None


def _context() -> multiprocessing.context.BaseContext:
    """fork when this process has one thread (fast, and works from any script); otherwise
    forkserver, since build_all may run in a thread beside an event loop and a forked child
    of a multi-threaded process can deadlock on a lock another thread held."""
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


Task = tuple[str, str, int]
ThumbResult = tuple[int, int] | str


def _serve(conn: Connection, inherited: tuple[int, ...]) -> None:
    """A thumbnail worker: a chunk of tasks in, (results, error or None) out, until end of file.

    Only the parent decides when the work stops. A terminal's Ctrl-C, `timeout` or a service
    manager signals the whole process group; the workers ignore that, and the parent, which
    gets the same signal, kills them (SIGKILL) and removes their temp files. When the parent
    is gone its end of the pipe closes and the worker returns, at the latest after its chunk.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in inherited:  # a forked worker's copies of the parent's pipe ends, closed so
        with contextlib.suppress(OSError):  # that the parent's exit reaches every worker
            os.close(fd)
    while True:
        try:
            chunk: list[Task] = conn.recv()
        except (EOFError, OSError):
            return
        done: list[ThumbResult] = []
        error: BaseException | None = None
        for task in chunk:
            try:
                done.append(make_thumb(task))
            except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
                error = exc
                break
        try:
            conn.send((done, error))
        except OSError:
            return
        except Exception:  # noqa: BLE001 - the error does not pickle: send its text instead
            try:
                conn.send((done, RuntimeError(f"{type(error).__name__}: {error}")))
            except OSError:
                return


#: How long a worker's unexpected end waits for the stop request that may explain it.
LOST_GRACE = 0.5


def _await_stop(stop: Stop | None) -> None:
    """Interrupted if a stop request comes within LOST_GRACE seconds; otherwise return.

    A signal sent to the whole process group can end a worker just starting (before it
    ignores signals) a moment before this process records the same signal as a stop.
    """
    if stop is None:
        return
    deadline = time.monotonic() + LOST_GRACE
    while True:
        stop.check()
        if time.monotonic() > deadline:
            return
        time.sleep(STOP_POLL / 5)


class _Workers:
    """Worker processes making thumbnails, fed one chunk at a time, stoppable at any moment.

    Owned outright (a pipe per worker, no queues, threads or semaphores in this process),
    so that stopping is simple: kill the workers, wait for them, delete the temp files of
    the chunks they held. With the fork context nothing else is started; with forkserver the
    server and its resource tracker end as soon as this process and the workers have.
    """

    def __init__(self, tasks: list[Task], workers: int, chunk: int, ctx: Any,
                 stop: Stop | None = None) -> None:
        self.tasks = tasks
        self.chunk = chunk
        self.next = 0
        self.results: list[ThumbResult | None] = [None] * len(tasks)
        self.busy: dict[Connection, int] = {}  # pipe -> index of its chunk's first task
        self.procs: dict[Connection, Any] = {}
        self.stop = stop
        fork = ctx.get_start_method() == "fork"
        try:
            for _ in range(workers):
                here, there = ctx.Pipe()
                inherited = tuple(c.fileno() for c in [*self.procs, here]) if fork else ()
                proc = ctx.Process(target=_serve, args=(there, inherited), daemon=True)
                try:
                    proc.start()
                except (BrokenPipeError, ConnectionResetError):
                    # A forkserver worker reads its start data from a pipe this process
                    # writes; one that died first (a Ctrl-C to the process group, before
                    # it ignores signals) breaks that pipe. Said as a lost worker, never
                    # as the BrokenPipeError, which would read as a closed standard output.
                    here.close()
                    raise self._ended_starting() from None
                finally:
                    there.close()
                self.procs[here] = proc
        except BaseException:
            self.close(finished=False)
            raise

    def _ended_starting(self) -> RuntimeError:
        """The error for a worker that ended while starting (Interrupted if a stop explains it)."""
        _await_stop(self.stop)
        return RuntimeError("a thumbnail worker process ended while it was starting")

    def run(self) -> list[ThumbResult]:
        """Every task's result, in order; raises what a worker raised, or Interrupted."""
        stop = self.stop
        if stop is not None:
            stop.check()  # a stop asked before the first chunk hands no worker any work
        for conn in self.procs:
            self._feed(conn)
        while self.busy:
            if stop is not None:
                stop.check()
            for ready in wait_ready(list(self.busy), timeout=STOP_POLL):
                conn = cast(Connection, ready)
                first = self.busy[conn]
                try:
                    done, error = conn.recv()
                except (EOFError, OSError):
                    raise self._lost(conn) from None
                del self.busy[conn]
                self.results[first:first + len(done)] = done
                if error is not None:
                    raise error
                self._feed(conn)
        return self.results  # type: ignore[return-value]  # every slot filled above

    def _feed(self, conn: Connection) -> None:
        if self.next >= len(self.tasks):
            return
        chunk = self.tasks[self.next:self.next + self.chunk]
        try:
            conn.send(chunk)
        except OSError:
            raise self._lost(conn) from None
        self.busy[conn] = self.next
        self.next += len(chunk)

    def _lost(self, conn: Connection) -> RuntimeError:
        """The error for a worker that ended by itself (Interrupted if a stop explains it)."""
        _await_stop(self.stop)
        proc = self.procs[conn]
        proc.join(1)
        return RuntimeError(f"a thumbnail worker process ended unexpectedly "
                            f"(exit code {proc.exitcode})")

    def close(self, finished: bool) -> None:
        """End the workers: idle ones by closing their pipes; else killed, temp files removed."""
        if not finished:
            for proc in self.procs.values():
                with contextlib.suppress(OSError):
                    proc.kill()
        for conn in self.procs:
            conn.close()
        for proc in self.procs.values():
            proc.join(10)
            if proc.exitcode is None:  # cannot happen short of a hung kernel call; be sure
                proc.kill()
                proc.join()
        if not finished:
            # A killed worker may have left the temp file of the thumbnail it was writing.
            for conn, first in self.busy.items():
                pid = self.procs[conn].pid
                for _src, dest, _longest in self.tasks[first:first + self.chunk]:
                    with contextlib.suppress(OSError):
                        _thumb_tmp(Path(dest), pid).unlink(missing_ok=True)


def make_thumbs(tasks: list[Task], workers: int, stop: Stop | None = None) -> list[ThumbResult]:
    """Run make_thumb over `tasks`, spread over `workers` processes when there are enough.

    With `stop`, a stop request ends the work within STOP_POLL seconds (between images when
    working alone) with Interrupted; workers are killed and their temp files removed.
    """
    # one choice of start method for the threshold and the pool (typeshed's BaseContext
    # lacks the Process of its subclasses, hence Any)
    ctx: Any = _context()
    least = PARALLEL_MIN if ctx.get_start_method() == "fork" else PARALLEL_MIN_SPAWNED
    if workers <= 1 or len(tasks) < least:
        out: list[ThumbResult] = []
        for t in tasks:
            if stop is not None:
                stop.check()
            out.append(make_thumb(t))
        return out
    workers = min(workers, len(tasks))
    chunk = max(1, min(16, len(tasks) // (workers * 4)))
    pool = _Workers(tasks, workers, chunk, ctx, stop)
    finished = False
    try:
        results = pool.run()
        finished = True
    finally:
        pool.close(finished)
    return results


def build_thumbs(
    entries: list[Entry], root: Path, longest: int, workers: int, stop: Stop | None = None,
) -> tuple[list[Entry], int, int]:
    """Make missing or stale thumbnails; entries with `thumb` set; (entries, made, kept)."""
    images = root / IMAGES
    out = list(entries)
    todo: list[tuple[int, tuple[str, str, int]]] = []
    kept = 0
    for i, e in enumerate(out):
        if e.state != OK:
            continue
        rel = thumb_rel(e.job.path)
        size = _current_thumb(images / e.job.path, root / rel, longest)
        if size is not None:
            out[i] = replace(e, thumb=rel, thumb_size=size)
            kept += 1
        else:
            todo.append((i, (str(images / e.job.path), str(root / rel), longest)))
    results = make_thumbs([t for _, t in todo], workers, stop)
    sweep_legacy_thumbs((e.job.path for e in out), root)
    made = 0
    for (i, _task), res in zip(todo, results, strict=True):
        e = out[i]
        if isinstance(res, str):
            out[i] = replace(e, state=FAILED, reason=res)
        else:
            out[i] = replace(e, thumb=thumb_rel(e.job.path), thumb_size=res)
            made += 1
    return out, made, kept


def full_images(entries: list[Entry], root: Path, box: int) -> list[Entry]:
    """Thumbnails off: show the images themselves, sized to fit `box` in the page."""
    out = []
    for e in entries:
        if e.state != OK:
            out.append(e)
            continue
        try:
            with Image.open(root / IMAGES / e.job.path) as im:
                size = imaging.fit_size(im.size, (box, box))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            out.append(replace(e, state=FAILED, reason=f"image unreadable: {exc}"))
            continue
        out.append(replace(e, thumb=f"{IMAGES}/{e.job.path}", thumb_size=size))
    return out


def _loader(root: Path, box: int, scale: bool) -> Callable[[Entry], Image.Image | None]:
    def load(e: Entry) -> Image.Image | None:
        if e.thumb is None:
            return None
        try:
            img = Image.open(root / e.thumb)
            if scale:  # full-size image: shrink it now, cheaply (draft/reduce)
                with img:
                    return imaging.thumbnail(img, box)
            img.load()
            return img
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
    return load


def build_sheets(
    plan: Plan, entries: list[Entry], root: Path, *, box: tuple[int, int], scale: bool,
    max_pixels: int = imaging.MAX_SHEET_PIXELS, stop: Stop | None = None,
) -> tuple[tuple[Path, ...], tuple[imaging.Page, ...]]:
    """Write contact-sheet.png, -2.png, ...; remove pages left from a longer earlier sheet.

    A stop request is honoured between pages (Interrupted): each page is written whole.
    """
    pages = imaging.layout(plan.name, entries, box=box, per_page=plan.output.per_page,
                           max_pixels=max_pixels, briefs=dict(plan.briefs))
    load = _loader(root, max(box), scale)
    written: list[Path] = []
    for page in pages:
        if stop is not None:
            stop.check()
        sheet = imaging.render(page, load)
        buf = io.BytesIO()
        sheet.save(buf, format="PNG", compress_level=SHEET_COMPRESS)
        del sheet
        path = root / sheet_name(page.number)
        write_file(path, buf.getvalue())
        written.append(path)
    remove_stale_sheets(root, len(pages))
    return tuple(written), tuple(pages)


def remove_stale_sheets(root: Path, count: int) -> list[Path]:
    """Delete contact-sheet pages numbered above `count`; return what was removed."""
    removed = []
    for path in _sheet_files(root):
        m = _SHEET_PAGE.fullmatch(path.name)
        if m and int(m.group(1) or 1) > count:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise write_error(path, exc) from None
            removed.append(path)
    return removed


def _sheet_files(root: Path) -> Iterable[Path]:
    try:
        return [p for p in root.iterdir() if p.name.startswith("contact-sheet")]
    except FileNotFoundError:
        return []


def with_picks(entries: list[Entry], chosen: picks.Picks, plan: Plan) -> list[Entry]:
    """Entries carrying the picks file's decision (pick, reject, stale) and rating."""
    out = []
    for e in entries:
        mark = chosen.status_of(e.job.path, plan)
        entry = chosen.entries.get(e.job.path)
        rating = entry.rating if entry is not None and mark != imaging.STALE else None
        out.append(replace(e, pick=mark, rating=rating) if mark or rating else e)
    return out


def build_all(
    plan: Plan, root: Path, *, backend: str | Iterable[str] | None = None,
    workers: int | None = None, max_sheet_pixels: int = imaging.MAX_SHEET_PIXELS,
    stop: Stop | None = None, picks_file: Path | None = None,
) -> PostResult:
    """Thumbnails (new or changed images only), contact sheets and index.html under `root`.

    Jobs are shown as done for `backend` (see entries_for): after a run, the run's backend;
    `imagebatch sheet`, the backend `status` judges against; `merge`, None (any backend).
    With `stop`, a stop request ends the work promptly with Interrupted, leaving only whole
    files (and no worker process); running it again finishes the job. Sheets and index mark
    the decisions of `picks_file` when it exists.
    """
    started = time.perf_counter()
    root = Path(root)
    # Read first: a broken picks file is reported before anything is written. A shard's
    # plan (or a subset's: `sheet --only`) lacks the other paths, so only the whole plan
    # checks them.
    whole = plan.shard is None and len(plan.jobs) == plan.total
    chosen = (picks.load_picks(picks_file, plan if whole else None)
              if picks_file is not None else None)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(root, exc) from None
    workers = (os.cpu_count() or 1) if workers is None else workers
    entries = entries_for(plan, root, backend)
    if chosen is not None:
        entries = with_picks(entries, chosen, plan)
    longest = plan.output.thumbnail
    made = kept = 0
    if stop is not None:
        stop.check()
    if longest > 0:
        entries, made, kept = build_thumbs(entries, root, longest, workers, stop)
        box_side = longest
    else:
        box_side = imaging.SHEET_BOX
        entries = full_images(entries, root, box_side)
    box = _cell_box(entries, box_side)
    sheets, pages = build_sheets(plan, entries, root, box=box, scale=longest <= 0,
                          max_pixels=max_sheet_pixels, stop=stop)
    if stop is not None:
        stop.check()
    index = root / INDEX
    names = [p.name for p in sheets]
    page = report.index_html(plan, entries, names, out=root.parent, picks_file=picks_file)
    write_file(index, page.encode("utf-8"))
    return PostResult(
        thumbs_made=made, thumbs_kept=kept, sheets=sheets, index=index,
        missing=sum(e.state != OK for e in entries),
        seconds=round(time.perf_counter() - started, 3), pages=pages,
    )


def _cell_box(entries: list[Entry], side: int) -> tuple[int, int]:
    """One box for every cell: large enough for the widest and the tallest picture."""
    sizes = [e.thumb_size or imaging.thumb_size(e.job, side) for e in entries]
    if not sizes:
        return side, side
    return max(w for w, _ in sizes), max(h for _, h in sizes)


__all__ = [
    "INDEX",
    "THUMBS",
    "PostResult",
    "Stop",
    "build_all",
    "build_sheets",
    "build_thumbs",
    "entries_for",
    "make_thumb",
    "make_thumbs",
    "remove_stale_sheets",
    "sheet_name",
    "stop_on_signals",
    "sweep_legacy_thumbs",
    "thumb_rel",
    "with_picks",
]

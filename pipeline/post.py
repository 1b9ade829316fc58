"""Post-processing over disk: thumbnails, contact sheets and index.html for one output folder.

Reads `results.jsonl` and `images/`, writes `thumbs/`, `contact-sheet*.png` and `index.html`
under the same root. Pure work (pixels, layout, HTML) lives in imaging.py and report.py.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from pipeline import imaging, picks, report
from pipeline.imaging import FAILED, MISSING, OK, Entry
from pipeline.plan import Plan
from pipeline.store import (
    IMAGES,
    RESULTS,
    TMP_PREFIX,
    Record,
    read_records,
    write_error,
    write_file,
)

THUMBS = "thumbs"
INDEX = "index.html"
SHEET = "contact-sheet.png"
_SHEET_PAGE = re.compile(r"contact-sheet(?:-(\d+))?\.png")
#: Below this many thumbnails to make, starting worker processes costs more than it saves.
PARALLEL_MIN = 12
#: PNG zlib level for sheets: 1 is several times faster than 6 and only slightly larger
#: on photographic thumbnails.
SHEET_COMPRESS = 1


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
    """thumbs/<image path>.jpg, relative to the output root."""
    return f"{THUMBS}/{image_path}.jpg"


def latest_records(path: Path) -> dict[str, Record]:
    """The last record of each key in a results.jsonl."""
    return {rec.key: rec for rec in read_records(path)}


def entries_for(plan: Plan, root: Path) -> list[Entry]:
    """Each job of `plan` with its state: ok (recorded ok, image on disk), failed or missing."""
    records = latest_records(root / RESULTS)
    images = root / IMAGES
    out: list[Entry] = []
    for job in plan.jobs:
        rec = records.get(job.key)
        if rec is not None and rec.status == "ok" and (images / job.path).is_file():
            out.append(Entry(job, OK))
        elif rec is not None and rec.status == "failed":
            out.append(Entry(job, FAILED, rec.error or "failed"))
        else:
            out.append(Entry(job, MISSING))
    return out


def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=imaging.JPEG_QUALITY, optimize=False)
    return buf.getvalue()


def _save_jpeg(data: bytes, dest: Path, mtime_ns: int) -> None:
    """Temp file + os.replace: a thumbnail is never seen half written; StoreError on failure.

    The thumbnail takes its image's mtime: any other mtime on either side (a newer image,
    or one replaced by an older copy) means it is stale. No fsync: thumbnails are derived
    data, remade whenever they do not match.
    """
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}.{os.getpid()}"
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
            size = t.size
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


def make_thumbs(tasks: list[tuple[str, str, int]], workers: int) -> list[tuple[int, int] | str]:
    """Run make_thumb over `tasks`, spread over `workers` processes when there are enough."""
    if workers <= 1 or len(tasks) < PARALLEL_MIN:
        return [make_thumb(t) for t in tasks]
    workers = min(workers, len(tasks))
    chunk = max(1, min(16, len(tasks) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        return list(pool.map(make_thumb, tasks, chunksize=chunk))


def build_thumbs(
    entries: list[Entry], root: Path, longest: int, workers: int
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
    results = make_thumbs([t for _, t in todo], workers)
    made = 0
    for (i, task), res in zip(todo, results):
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


def _loader(root: Path, box: int, scale: bool):
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
    max_pixels: int = imaging.MAX_SHEET_PIXELS,
) -> tuple[tuple[Path, ...], tuple[imaging.Page, ...]]:
    """Write contact-sheet.png, -2.png, ...; remove pages left from a longer earlier sheet."""
    pages = imaging.layout(plan.name, entries, box=box, per_page=plan.output.per_page,
                           max_pixels=max_pixels)
    load = _loader(root, max(box), scale)
    written: list[Path] = []
    for page in pages:
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
    plan: Plan, root: Path, *, workers: int | None = None,
    max_sheet_pixels: int = imaging.MAX_SHEET_PIXELS, picks_file: Path | None = None,
) -> PostResult:
    """Thumbnails (new or changed images only), contact sheets and index.html under `root`;
    sheets and index mark the decisions of `picks_file` when it exists."""
    started = time.perf_counter()
    root = Path(root)
    # Read first: a broken picks file is reported before anything is written. A shard's
    # plan lacks the other shards' paths, so only the whole plan checks them.
    chosen = (picks.load_picks(picks_file, plan if plan.shard is None else None)
              if picks_file is not None else None)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(root, exc) from None
    workers = (os.cpu_count() or 1) if workers is None else workers
    entries = entries_for(plan, root)
    if chosen is not None:
        entries = with_picks(entries, chosen, plan)
    longest = plan.output.thumbnail
    made = kept = 0
    if longest > 0:
        entries, made, kept = build_thumbs(entries, root, longest, workers)
        box_side = longest
    else:
        box_side = imaging.SHEET_BOX
        entries = full_images(entries, root, box_side)
    box = _cell_box(entries, box_side)
    sheets, pages = build_sheets(plan, entries, root, box=box, scale=longest <= 0,
                          max_pixels=max_sheet_pixels)
    index = root / INDEX
    names = [p.name for p in sheets]
    write_file(index, report.index_html(plan, entries, names).encode("utf-8"))
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
    "build_all",
    "build_sheets",
    "build_thumbs",
    "entries_for",
    "latest_records",
    "make_thumb",
    "make_thumbs",
    "remove_stale_sheets",
    "sheet_name",
    "thumb_rel",
    "with_picks",
]

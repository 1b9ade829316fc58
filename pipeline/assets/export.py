"""`imagebatch export`: chosen images become finished files, and assets.json lists them.

Reads the plan, the picks file and `images/` (it never sends a request), works out every
file each export should hold (exportplan.py), makes only what is missing or out of date,
removes the files it wrote earlier that no longer belong, and writes `assets.json`.

The export root (`assets/<name>/`) keeps `.imagebatch-export.json`: each file written with
its settings' fingerprint, its source's sha256 and its own size and mtime, so a file is
made again only when its source or its settings changed (or it was changed on disk), and
only files listed there are ever replaced or removed.

New files are first written beside their final names as temp files (in worker processes,
one task per source image); only when every one is on disk are they moved into place, the
old ones removed and assets.json rewritten. A full or read-only disk therefore leaves the
previous files and assets.json as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from ..errors import ImagebatchError, StoreError, UsageError, printable
from ..pictures import imaging
from ..planning import exportplan
from ..planning.config import DEFAULT_PREFIX
from ..planning.exportplan import ASSETS_JSON, LOCK_FILE, STATE_FILE, Target
from ..planning.manifest import DEFAULT_MAX_JOBS
from ..planning.plan import TMP_PREFIX, ExportSettings, Job, Plan
from ..storage import credentials, metadata
from ..storage.credentials import SignerConfig
from ..storage.store import IMAGES, write_error, write_file

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one export per folder is then the user's care
    fcntl = None  # type: ignore[assignment]

STATE_VERSION = 1
#: A source larger than this is refused unread (a decompression bomb, or not a generated
#: image: the API makes about one megapixel).
MAX_SOURCE_PIXELS = 50_000_000
#: Below this many source images to process, worker processes cost more than they save.
PARALLEL_MIN = 4
PNG_COMPRESS_LEVEL = 6
WEBP_METHOD = 4  # libwebp's default effort: 0 fastest .. 6 smallest
AVIF_SPEED = 6  # libavif's default: 0 slowest .. 10 fastest
# Pillow names of the formats, and the feature each needs in the Pillow build
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
_FEATURE = {"webp": "webp", "avif": "avif"}


class ExportError(ImagebatchError):
    """An export that cannot be made as asked (a format this Pillow cannot write, ...)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A chosen image that was not exported, and why."""

    path: str  # image path relative to images/
    exports: tuple[str, ...]  # the exports that chose it
    reason: str


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one export run did."""

    name: str
    root: Path
    written: tuple[str, ...]  # files made (new or out of date)
    kept: int  # files already up to date
    removed: tuple[str, ...]  # files written earlier that no longer belong
    skipped: tuple[Skipped, ...]  # chosen images without files: not generated, failed, stale
    failed: tuple[Skipped, ...]  # sources that could not be read, files that could not go in place
    files: int  # entries of assets.json
    seconds: float
    notes: tuple[str, ...] = ()


# ---- the project's definition of done --------------------------------------------------------

JobState = Callable[[Job], tuple[str, str | None]]


def job_states(plan: Plan, out_dir: Path, backends: frozenset[str],
               made: dict[str, Job] | None = None) -> JobState:
    """job -> ('done', None), or (state, why it has no usable image), by the store's one
    definition of done (`store.job_states`), against `backends` (what `status` judges by).

    `made`, when given, is filled with image path -> the job as it was sent, for a mixed
    pool's images made under another provider's key than the plan's (their assets embed and
    name that request: the one that made them)."""
    from ..storage import store

    root = Path(out_dir) / plan.name
    judged = {st.job.key: st for st in store.job_states(plan.jobs, root, backends)}
    if made is not None:
        for job in plan.jobs:
            rec = judged[job.key].record
            if judged[job.key].state == store.DONE and rec is not None and rec.key != job.key:
                made[job.path] = next(v for v in job.variants if v.key == rec.key)

    def state(job: Job) -> tuple[str, str | None]:
        st = judged[job.key]
        if st.state == store.DONE:
            return "done", None
        if st.state == store.FAILED:
            error = st.record.error if st.record is not None else None
            return "failed", f"failed: {error or 'unknown error'}"
        if (root / store.IMAGES / job.path).exists():
            return "stale", ("the image on disk is not the one recorded for this job (made "
                             "for another request or backend, or changed since); run the "
                             "manifest again")
        return "pending", "not generated yet"

    return state


# ---- choosing images -------------------------------------------------------------------------

def choose(plan: Plan, picks: Any, state: JobState
           ) -> tuple[list[tuple[ExportSettings, Job]], dict[str, tuple[list[str], str]]]:
    """(export, job) pairs to make files of, and image path -> (exports, reason) for chosen
    images that have no usable image (stale decisions, failed or pending jobs)."""
    from ..storage.picks import PICK, REJECT

    by_path = {job.path: job for job in plan.jobs}
    chosen: list[tuple[ExportSettings, Job]] = []
    skipped: dict[str, tuple[list[str], str]] = {}
    states: dict[str, tuple[str, str | None]] = {}

    def skip(path: str, spec: ExportSettings, reason: str) -> None:
        exports, _ = skipped.setdefault(path, ([], reason))
        exports.append(spec.name)

    for spec in plan.exports:
        paths: list[str]
        if spec.source == "all":
            paths = [job.path for job in plan.jobs]
        else:
            paths = []
            for path, entry in picks.entries.items():
                wanted = entry.status == PICK if spec.source == "picks" else (
                    entry.rating is not None and entry.rating >= spec.rating
                    and entry.status != REJECT)
                if not wanted:
                    continue
                if path not in by_path or picks.is_stale(path, plan):
                    skip(path, spec, "stale: decided on an earlier request for this path (its "
                                     "prompt or settings changed); review it again")
                    continue
                paths.append(path)
            paths.sort(key=lambda p: by_path[p].index)
        for path in paths:
            job = by_path[path]
            if path not in states:
                states[path] = state(job)
            st, why = states[path]
            if st != "done":
                skip(path, spec, why or st)
                continue
            chosen.append((spec, job))
    return chosen, skipped


# ---- sources ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Source:
    """A source image as the export sees it: size, content hash, and its stat stamp."""

    path: str  # relative to images/
    size: tuple[int, int]
    sha256: str
    stamp: tuple[int, int]  # (bytes, mtime_ns)

    def as_dict(self) -> dict[str, Any]:
        """As the state file keeps it."""
        return {"width": self.size[0], "height": self.size[1], "sha256": self.sha256,
                "bytes": self.stamp[0], "mtime_ns": self.stamp[1]}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _bombs_are_errors() -> Iterator[None]:
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; here it is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _unreadable(exc: BaseException) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"refused: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read the image: {exc.strerror}"
    return f"cannot read the image: {exc}"


def read_source(images: Path, job: Job, cached: Mapping[str, Any] | None) -> Source | str:
    """The source of `job` (header and hash; the hash reused while its stamp is unchanged),
    or why it cannot be used."""
    path = images / job.path
    try:
        if not path.resolve().is_relative_to(images.resolve()):
            return "the image is a link that leaves the images folder; refused"
        st = path.stat()
    except OSError as exc:
        return _unreadable(exc)
    stamp = (st.st_size, st.st_mtime_ns)
    if cached is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if (int(cached["bytes"]), int(cached["mtime_ns"])) == stamp:
                size = (int(cached["width"]), int(cached["height"]))
                return Source(job.path, size, str(cached["sha256"]), stamp)
    try:
        with _bombs_are_errors(), Image.open(path) as img:
            size = img.size
        digest = _sha256_file(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        return _unreadable(exc)
    if size[0] * size[1] > MAX_SOURCE_PIXELS:
        return (f"refused: {size[0]}x{size[1]} pixels is more than the "
                f"{MAX_SOURCE_PIXELS:,} an export reads (a decompression bomb?)")
    return Source(job.path, size, digest, stamp)


# ---- making files (runs in worker processes) -------------------------------------------------

@dataclass(frozen=True, slots=True)
class Output:
    """One file to make of a source: where its temp file goes and how it is made."""

    tmp: str
    file: str  # under the export root, for messages
    format: str
    crop: tuple[float, float, float, float]
    scaled: tuple[int, int]
    canvas: tuple[int, int]
    quality: int | None
    background: tuple[int, int, int]
    body: str | None  # the request to embed; None: metadata stripped
    # what was done to the source, as C2PA actions (c2pa.cropped, c2pa.resized, ...): what
    # the file's own manifest says, when it is signed
    actions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Task:
    """Every file to make of one source image."""

    source: str  # absolute path
    outputs: tuple[Output, ...]
    signer: SignerConfig | None = None  # signs every file, the source as parent ingredient


_SRGB: Any = None


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """`img` converted from its embedded ICC profile to sRGB (relative colorimetric)."""
    from PIL import ImageCms

    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.createProfile("sRGB")
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if img.mode not in ("RGB", "RGBA", "L", "CMYK"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
    converted = ImageCms.profileToProfile(
        img, profile, _SRGB, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        outputMode=out_mode)
    assert converted is not None
    if img.mode == "RGBA" and converted.mode == "RGBA":
        converted.putalpha(img.getchannel("A"))  # colour conversion leaves alpha alone
    return converted


def _load(path: str, outputs: Sequence[Output]) -> tuple[Image.Image, float, float]:
    """The decoded source in RGB or RGBA and sRGB, and its scale against the file's own
    size (below 1 when a JPEG was decoded smaller, which is all the outputs need)."""
    with _bombs_are_errors():
        img = Image.open(path)
    try:
        w, h = img.size
        if w * h > MAX_SOURCE_PIXELS:
            raise ValueError(f"{w}x{h} pixels is more than the {MAX_SOURCE_PIXELS:,} an export "
                             "reads")
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            need = max(max(o.scaled[0] / (o.crop[2] - o.crop[0]),
                           o.scaled[1] / (o.crop[3] - o.crop[1])) for o in outputs)
            if need < 1:
                img.draft(img.mode, (math.ceil(w * need), math.ceil(h * need)))
        icc = img.info.get("icc_profile")
        img.load()
        out: Image.Image = img
        if icc:
            out = _to_srgb(img, icc)
        elif img.mode == "P":
            out = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode not in ("RGB", "RGBA"):
            out = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        if out.mode == "RGBA" and out.getchannel("A").getextrema() == (255, 255):
            out = out.convert("RGB")  # opaque: no alpha channel to carry
        rx, ry = out.size[0] / w, out.size[1] / h
        if out is img:
            out = img.copy()  # detach from the file before it is closed
        out.info = {}  # nothing of the source's (profile, exif, text) goes into the files
        return out, rx, ry
    finally:
        img.close()


def render(img: Image.Image, out: Output, rx: float = 1.0, ry: float = 1.0) -> Image.Image:
    """The picture of one file, before encoding: cropped, scaled (reduce, then Lanczos) and
    padded; alpha is left for the format to keep or flatten. `rx`, `ry`: the decoded
    image's scale against the source's size (a JPEG decoded smaller)."""
    left, top, right, bottom = out.crop
    box = (left * rx, top * ry, right * rx, bottom * ry)
    whole = box == (0.0, 0.0, float(img.size[0]), float(img.size[1]))
    if out.scaled == (round(box[2] - box[0]), round(box[3] - box[1])) and \
            all(v == int(v) for v in box):
        pic = img if whole else img.crop(tuple(int(v) for v in box))  # type: ignore[arg-type]
    else:
        pic = img.resize(out.scaled, Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)
    if out.canvas != out.scaled:
        fill = out.background + ((255,) if pic.mode == "RGBA" else ())
        canvas = Image.new(pic.mode, out.canvas, fill)
        canvas.paste(pic, ((out.canvas[0] - out.scaled[0]) // 2,
                           (out.canvas[1] - out.scaled[1]) // 2))
        pic = canvas
    return pic


def encode(pic: Image.Image, fmt: str, quality: int | None, body: str | None) -> bytes:
    """The file's bytes: fixed encoder settings (no timestamps), the AI marker and (unless
    `body` is None: metadata stripped) the request embedded."""
    buf = io.BytesIO()
    if fmt == "png":
        pic.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        pic.save(buf, "JPEG", quality=quality, optimize=True, progressive=True, subsampling=2)
    elif fmt == "webp":
        extra = {"xmp": metadata.xmp_packet(body)}
        pic.save(buf, "WEBP", quality=quality, method=WEBP_METHOD, **extra)
    elif fmt == "avif":
        extra = {"xmp": metadata.xmp_packet(body)}
        # one thread: tasks run in parallel processes, and the bytes must not depend on threads
        pic.save(buf, "AVIF", quality=quality, speed=AVIF_SPEED, subsampling="4:2:0",
                 max_threads=1, **extra)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    data = buf.getvalue()
    if fmt in ("png", "jpeg"):
        data = metadata.embed(data, body)  # the marker always, even with metadata stripped
    return data


def _write_tmp(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def make_files(task: Task) -> tuple[str, Any]:
    """Worker: every file of one source as temp files; ('ok', [(sha256, bytes)]), ('source',
    why the image cannot be used) or ('write', why a file cannot be written)."""
    try:
        img, rx, ry = _load(task.source, task.outputs)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        return "source", _unreadable(exc)
    made = []
    parent = None
    if task.signer is not None:
        try:
            blob = Path(task.source).read_bytes()
            parent = (blob, metadata.format_of(blob), Path(task.source).name)
        except (OSError, ValueError) as exc:
            return "source", _unreadable(exc)
    pictures: dict[tuple[Any, ...], Image.Image] = {}  # one resize serves every format
    for out in task.outputs:
        try:
            shape = (out.crop, out.scaled, out.canvas, out.background)
            if shape not in pictures:
                pictures[shape] = render(img, out, rx, ry)
            pic = pictures[shape]
            if out.format == "jpeg" and pic.mode != "RGB":
                pic = imaging.flatten(pic, out.background)
            data = encode(pic, out.format, out.quality, out.body)
            state = None
            if task.signer is not None and parent is not None:
                # last: the manifest is bound to the bytes, marker and request included
                data = credentials.sign_export(
                    data, out.format, task.signer, title=out.file.rsplit("/", 1)[-1],
                    parent=parent, actions=out.actions or ("c2pa.transcoded",))
                cred = credentials.read(data)
                state = None if cred is None else cred.state
        except (OSError, ValueError) as exc:
            return "source", f"cannot encode {out.file} ({out.format}): {exc}"
        except Exception as exc:  # noqa: BLE001 - c2pa's errors: the file cannot be signed
            if task.signer is None or type(exc).__module__.split(".")[0] != "c2pa":
                raise
            return "source", f"cannot sign {out.file} ({out.format}): {exc}"
        try:
            _write_tmp(out.tmp, data)
        except OSError as exc:
            return "write", f"cannot write {out.file}: {exc.strerror or exc}"
        made.append((hashlib.sha256(data).hexdigest(), len(data), state))
    return "ok", made


def _run_tasks(tasks: list[Task], workers: int) -> list[tuple[str, Any]]:
    if workers <= 1 or len(tasks) < PARALLEL_MIN:
        return [make_files(t) for t in tasks]
    from ..pictures.post import _context  # the start method safe beside threads

    workers = min(workers, len(tasks))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        return list(pool.map(make_files, tasks, chunksize=1))


# ---- the state file --------------------------------------------------------------------------

@dataclass(slots=True)
class State:
    """`.imagebatch-export.json`: what this export root holds that the export wrote."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Sorted, indented JSON."""
        doc = {"version": STATE_VERSION, "files": dict(sorted(self.files.items())),
               "sources": dict(sorted(self.sources.items()))}
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


_FILE_FIELDS = {"export": str, "width": int, "height": int, "format": str, "bytes": int,
                "sha256": str, "source": dict, "fingerprint": str, "source_sha256": str,
                "mtime_ns": int}


def load_state(root: Path) -> tuple[State, str | None]:
    """The state file (empty when missing), and a note when it was unreadable."""
    path = root / STATE_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return State(), None
    except (OSError, ValueError, RecursionError) as exc:
        return State(), (f"{path} is unreadable ({exc}); files it listed are no longer "
                         "known as the export's own: they are kept, and replaced only where "
                         "identical")
    state = State()
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return state, f"{path} is not a state file of this version; starting afresh"
    for name, rec in (doc.get("files") or {}).items():
        # only plain relative paths: a hand-edited entry must not make the export remove
        # (or overwrite) a file outside its root
        if isinstance(rec, dict) and all(isinstance(rec.get(k), t) for k, t in
                                         _FILE_FIELDS.items()) \
                and isinstance(name, str) and name and not name.startswith("/") \
                and not {"", ".", ".."} & set(name.split("/")) and "\\" not in name:
            state.files[name] = rec
    for name, rec in (doc.get("sources") or {}).items():
        if isinstance(rec, dict):
            state.sources[str(name)] = rec
    return state, None


def _same_file(path: Path, rec: Mapping[str, Any]) -> bool:
    """The file at `path` is still the one recorded (size and mtime, or else its hash)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not os.path.isfile(path):
        return False
    # the types were checked against _FILE_FIELDS when the state file was read
    size: int = rec["bytes"]
    sha256: str = rec["sha256"]
    if st.st_size == size and st.st_mtime_ns == rec["mtime_ns"]:
        return True
    return st.st_size == size and _sha256_file(path) == sha256


def asset_entry(rec: Mapping[str, Any], file: str) -> dict[str, Any]:
    """One entry of assets.json: the file, its source, and its provenance (the AI marker
    every file carries; its Content Credentials' state as checked when it was made, or
    None when unsigned)."""
    return {"file": file, "export": rec["export"], "width": rec["width"],
            "height": rec["height"], "format": rec["format"], "bytes": rec["bytes"],
            "sha256": rec["sha256"], "source": rec["source"],
            "digital_source_type": metadata.TRAINED_ALGORITHMIC_MEDIA,
            "content_credentials": rec.get("credential")}


def assets_json(state: State) -> bytes:
    """assets.json: {"version": 1, "files": [...]} sorted by file; no timestamps."""
    files = [asset_entry(rec, name) for name, rec in sorted(state.files.items())]
    return (json.dumps({"version": 1, "files": files}, indent=2, ensure_ascii=False)
            + "\n").encode("utf-8")


# ---- the export ------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the export root's lock: two exports into one root would sweep each other's temps."""
    lock = root / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(lock, exc) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another imagebatch export is writing to {root}; wait for "
                                 "it to finish") from None
            except OSError:
                pass  # a filesystem without locks: go on as before
        yield
    finally:
        os.close(fd)


def _prepare_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StoreError(f"the export root {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the export root {root}: "
                         f"{exc.strerror or exc}") from None


def _sweep_temps(root: Path) -> None:
    """Temp files a killed export left (their prefix is never an export path's)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))


def check_formats(formats: set[str]) -> None:
    """Refuse, before anything is written, formats this Pillow build cannot write."""
    from PIL import features

    for fmt in sorted(formats):
        feature = _FEATURE.get(fmt)
        if feature and not features.check(feature):
            import PIL

            raise ExportError(
                f"this Pillow ({PIL.__version__}) cannot write {fmt.upper()}: it was built "
                f"without lib{fmt}; install a Pillow wheel that has it: "
                "pip install --upgrade 'pillow>=11.3' (or build Pillow with "
                f"lib{fmt} installed)")


def _inside(root: Path, file: str) -> bool:
    """The file's folder resolves inside the export root (no link in it leads out)."""
    try:
        parent = (root / file).parent.resolve()
    except OSError:
        return False
    return parent.is_relative_to(root.resolve())


def _remove_empty_dirs(root: Path, file: str) -> None:
    parent = (root / file).parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _record(t: Target, sha: str, size: int, mtime_ns: int, source: Source,
            signer: SignerConfig | None, credential: str | None) -> dict[str, Any]:
    return {"export": t.export.name, "width": t.size[0], "height": t.size[1],
            "format": t.format, "bytes": size, "sha256": sha,
            "source": {"path": t.job.path, "key": t.job.key, "seed": t.job.seed},
            "fingerprint": t.fingerprint, "source_sha256": source.sha256,
            "mtime_ns": mtime_ns, "signed": None if signer is None else signer.tag,
            "credential": credential}


def _actions(t: Target, source: Source, source_format: str) -> tuple[str, ...]:
    """What making `t` does to its source, as C2PA actions."""
    geo = t.geometry
    left, top, right, bottom = geo.crop
    actions = []
    if (left, top, right, bottom) != (0, 0, source.size[0], source.size[1]):
        actions.append("c2pa.cropped")
    if geo.scaled != (round(right - left), round(bottom - top)):
        actions.append("c2pa.resized")
    if geo.canvas != geo.scaled:
        actions.append("c2pa.edited")  # padded to the canvas with the background colour
    if t.format != source_format:
        actions.append("c2pa.transcoded")
    return tuple(actions)


def export_plan(plan: Plan, *, out_dir: Path, assets_dir: Path, picks: Any,
                state_of: JobState, workers: int | None = None,
                made: Mapping[str, Job] | None = None,
                signer: SignerConfig | None = None) -> ExportResult:
    """Bring `assets_dir/<name>/` up to date with the plan's exports; see the module doc.
    With `signer`, every file written gets signed Content Credentials (its source as
    parent ingredient); a file signed otherwise (or not at all) is made again."""
    started = time.perf_counter()
    root = Path(assets_dir) / plan.name
    images = Path(out_dir) / plan.name / IMAGES
    chosen, skipped_map = choose(plan, picks, state_of)
    _prepare_root(root)
    with _locked(root):
        _sweep_temps(root)
        state, note = load_state(root)
        notes = [note] if note else []
        failed: dict[str, tuple[list[str], str]] = {}
        sources: dict[str, Source] = {}
        ready: list[tuple[ExportSettings, Job, tuple[int, int]]] = []
        for spec, job in chosen:
            if job.path not in sources and job.path not in failed:
                src = read_source(images, job, state.sources.get(job.path))
                if isinstance(src, str):
                    failed[job.path] = ([], src)
                else:
                    sources[job.path] = src
            if job.path in failed:
                failed[job.path][0].append(spec.name)
                continue
            # the request that made the image (a mixed pool's other provider's, maybe)
            ready.append((spec, (made or {}).get(job.path, job), sources[job.path].size))
        targets = exportplan.plan_targets(plan, ready)  # a clash raises: nothing written yet
        wanted = {t.file for t in targets}
        todo: list[Target] = []
        kept = 0
        for t in targets:
            rec = state.files.get(t.file)
            if rec is not None and rec["fingerprint"] == t.fingerprint and \
                    rec["source_sha256"] == sources[t.job.path].sha256 and \
                    rec.get("signed") == (None if signer is None else signer.tag) and \
                    _same_file(root / t.file, rec):
                kept += 1
            else:
                todo.append(t)
        check_formats({t.format for t in todo})
        written, place_failed = _make(root, images, todo, sources, state, workers, signer)
        for path, why in place_failed.items():
            exports = [spec.name for spec, job in chosen if job.path == path]
            failed.setdefault(path, (exports, why))
        # A chosen image whose files cannot be made now (not generated yet, unreadable, ...)
        # keeps the files made of it earlier under the same key; a stale decision's files
        # were made for another key, and go.
        keys = {job.path: job.key for job in plan.jobs}
        keep_keys = {(e, keys[path]) for path, (exports, _) in (*failed.items(),
                                                                 *skipped_map.items())
                     if path in keys for e in exports}
        removed = _remove(root, state, wanted, keep_keys, notes)
        state.sources = {p: s.as_dict() for p, s in sorted(sources.items())}
        write_file(root / STATE_FILE, state.to_bytes())
        write_file(root / ASSETS_JSON, assets_json(state))
    return ExportResult(
        name=plan.name, root=root, written=tuple(written), kept=kept, removed=tuple(removed),
        skipped=tuple(Skipped(p, tuple(e), r) for p, (e, r) in skipped_map.items()),
        failed=tuple(Skipped(p, tuple(dict.fromkeys(e)), r) for p, (e, r) in failed.items()),
        files=len(state.files), seconds=round(time.perf_counter() - started, 3),
        notes=tuple(notes))


def _make(root: Path, images: Path, todo: list[Target], sources: Mapping[str, Source],
          state: State, workers: int | None, signer: SignerConfig | None = None,
          ) -> tuple[list[str], dict[str, str]]:
    """Write `todo` as temp files, then move them into place; (files written, image path ->
    why its files could not be placed). A write failure removes every temp file and raises."""
    failed: dict[str, str] = {}
    by_source: dict[str, list[tuple[Target, Output]]] = {}
    token = f"{os.getpid()}"
    for t in todo:
        final = root / t.file
        if not _inside(root, t.file):
            failed.setdefault(t.job.path, f"{t.file}: a folder on its path is a link that "
                                          "leaves the export root; refused")
            continue
        if final.is_dir():
            failed.setdefault(t.job.path, f"{t.file} is a folder; move it away")
            continue
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(final.parent, exc) from None
        geo = t.geometry
        out = Output(str(final.parent / f"{TMP_PREFIX}{final.name}.{token}"), t.file, t.format,
                     geo.crop, geo.scaled, geo.canvas, exportplan.quality(t.export, t.format),
                     t.export.background,
                     t.job.body if t.export.metadata == "keep" else None,
                     _actions(t, sources[t.job.path], {"jpg": "jpeg"}.get(t.job.ext, t.job.ext)))
        by_source.setdefault(t.job.path, []).append((t, out))
    tasks = [Task(str(images / path), tuple(o for _, o in items), signer)
             for path, items in by_source.items()]
    temps = [o.tmp for task in tasks for o in task.outputs]
    try:
        results = _run_tasks(tasks, (os.cpu_count() or 1) if workers is None else workers)
        for kind, value in results:
            if kind == "write":
                raise StoreError(f"cannot write in {root}: {value}")
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    written: list[str] = []
    try:
        for (path, items), (kind, value) in zip(by_source.items(), results, strict=True):
            if kind == "source":
                failed.setdefault(path, value)
                for _, out in items:
                    with contextlib.suppress(OSError):
                        os.unlink(out.tmp)
                continue
            for (t, out), (sha, size, credential) in zip(items, value, strict=True):
                final = root / t.file
                rec = state.files.get(t.file)
                if rec is None and (final.exists() or final.is_symlink()):
                    # not ours: taken over only when it is already exactly this file
                    if final.is_file() and not final.is_symlink() and \
                            _sha256_file(final) == sha:
                        os.unlink(out.tmp)
                        st = final.stat()
                        state.files[t.file] = _record(t, sha, size, st.st_mtime_ns,
                                                      sources[path], signer, credential)
                        continue
                    os.unlink(out.tmp)
                    failed.setdefault(path, f"{t.file} exists and was not written by "
                                            "imagebatch export: left as it is; move it "
                                            "away, or change the export's path")
                    continue
                os.replace(out.tmp, final)
                mtime = final.stat().st_mtime_ns
                state.files[t.file] = _record(t, sha, size, mtime, sources[path], signer,
                                              credential)
                written.append(t.file)
    except OSError as exc:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise StoreError(f"cannot write in {root}: {exc.strerror or exc}") from None
    return written, failed


def _remove(root: Path, state: State, wanted: set[str], keep_keys: set[tuple[str, str]],
            notes: list[str]) -> list[str]:
    """Remove the files written earlier that no longer belong; never a file changed since."""
    removed = []
    for name in sorted(state.files):
        rec = state.files[name]
        if name in wanted or (rec["export"], rec["source"].get("key")) in keep_keys:
            continue
        path = root / name
        if not path.exists():
            del state.files[name]
            continue
        if not _inside(root, name) or not _same_file(path, rec):
            notes.append(f"{path} no longer belongs to an export but changed since it was "
                         "written: left in place")
            del state.files[name]
            continue
        try:
            path.unlink()
        except OSError as exc:
            raise write_error(path, exc) from None
        del state.files[name]
        removed.append(name)
        _remove_empty_dirs(root, name)
    return removed


# ---- the command -----------------------------------------------------------------------------

def report(result: ExportResult, picks_note: str | None, out: TextIO, err: TextIO) -> int:
    """Print what was done, and the chosen images that were not exported; the exit code."""
    n = len(result.written)
    print(f"{result.name}: {n} file{'' if n == 1 else 's'} written, {result.kept} up to date, "
          f"{len(result.removed)} removed; {result.files} in {result.root / ASSETS_JSON} "
          f"({result.seconds:.1f} s)", file=out)
    for note in (*result.notes, *([picks_note] if picks_note else [])):
        print(f"  note: {printable(note)}", file=err)
    problems = [*result.skipped, *result.failed]
    for s in problems:
        print(f"  NOT EXPORTED {printable(s.path)} ({', '.join(s.exports)}): "
              f"{printable(s.reason)}", file=err)
    if problems:
        print(f"imagebatch: {len(problems)} chosen image{'s' if len(problems) > 1 else ''} "
              "not exported; the rest is written", file=err)
        return 1
    return 0


def export_command(manifest: str, *, out_dir: Path = Path("outputs"),
                   assets_dir: Path = Path("assets"), picks_file: str | None = None,
                   local: bool = False, env_prefixes: Sequence[str] = (DEFAULT_PREFIX,),
                   max_jobs: int = DEFAULT_MAX_JOBS,
                   env: Mapping[str, str] | None = None, out: TextIO | None = None,
                   err: TextIO | None = None, check: bool = False) -> int:
    """`imagebatch export`: write every export of a manifest from images on disk; with
    `check`, write nothing and check every file's provenance instead (`check_assets`)."""
    from ..storage.context import resolve
    from ..storage.picks import load_picks, picks_path

    out = out or sys.stdout
    err = err or sys.stderr
    # before anything is written: signing asked for (the variables set) needs the c2pa extra
    signer = credentials.signer_from_env(os.environ if env is None else env)
    # every prefix: a mixed pool's job is done (and exported) under any of its keys
    ctx = resolve([manifest], env=env, env_prefixes=env_prefixes, local=local,
                  out_dir=out_dir, max_jobs=max_jobs)
    plan, backends = ctx.plan, ctx.judged
    if check:
        return check_assets(Path(assets_dir) / plan.name, out, err,
                            signed=signer is not None)
    path = picks_path(manifest, picks_file)
    if picks_file is not None and not path.exists():
        raise UsageError(f"{path}: no such picks file")
    picks = load_picks(path, plan)
    note = None
    if not path.exists() and any(e.source != "all" for e in plan.exports):
        note = (f"no picks file {path}: exports from picks choose nothing yet "
                "(choose with `imagebatch review` or `imagebatch pick`)")
    made: dict[str, Job] = {}
    result = export_plan(plan, out_dir=Path(out_dir), assets_dir=Path(assets_dir), picks=picks,
                         state_of=job_states(plan, Path(out_dir), backends, made), made=made,
                         signer=signer)
    return report(result, note, out, err)


def check_assets(root: Path, out: TextIO, err: TextIO, *, signed: bool) -> int:
    """`export --check`: every file assets.json lists must be there as listed, carry the AI
    marker, and carry Content Credentials that validate (every file when `signed`, the team
    signing; else those assets.json records as signed). 0 when all pass, 1 otherwise: what
    CI holds a release on. A self-issued certificate passes (integrity is what is checked;
    trust is the viewer's)."""
    try:
        doc = json.loads((root / ASSETS_JSON).read_bytes())
        entries = [e for e in doc["files"] if isinstance(e, dict)]
    except FileNotFoundError:
        raise UsageError(f"{root / ASSETS_JSON}: no such file; run `imagebatch export` "
                         "first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{root / ASSETS_JSON}: unreadable ({exc})") from None
    bad = 0
    for entry in entries:
        name = str(entry.get("file"))
        if not _inside(root, name):
            why: str | None = "lies outside the export root"
        else:
            try:
                data = (root / name).read_bytes()
            except OSError as exc:
                why = f"cannot be read: {exc.strerror or exc}"
            else:
                if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                    why = "changed since it was exported (its SHA-256 differs from assets.json)"
                else:
                    why = credentials.check_file(
                        data, signed=signed or entry.get("content_credentials") is not None)
        if why is not None:
            bad += 1
            print(f"  FAILED {printable(name)}: {printable(why)}", file=err)
    print(f"{root.name}: {len(entries) - bad} of {len(entries)} files pass the provenance "
          "check", file=out)
    return 1 if bad else 0


__all__ = [
    "ExportError",
    "ExportResult",
    "Skipped",
    "choose",
    "encode",
    "export_command",
    "check_assets",
    "export_plan",
    "job_states",
    "load_state",
    "make_files",
    "read_source",
    "render",
]

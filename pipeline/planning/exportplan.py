"""PURE: the files each export makes of an image (sizes, crops, paths) and the clashes refused.

Nothing here reads pixels or files. At validation the image sizes come from the requests
(the size the API makes); at export time from the images' headers. Both go through the same
`geometry` and `render_path`, so what `validate` accepts is what `export` writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ManifestError, Problem
from . import apispec
from .plan import (
    TMP_PREFIX,
    ExportSettings,
    Job,
    Plan,
    aspect_of,
    canonical_json,
    safe,
    windows_problem,
)

#: Encoder settings are part of every file's fingerprint: change this when they change, so
#: files made the old way are made again.
RECIPE = "imagebatch-export-2"  # 2: the AI marker (XMP DigitalSourceType) in every file
#: The quality each lossy format gets when an export sets none (PNG is lossless).
DEFAULT_QUALITY = {"jpeg": 85, "webp": 82, "avif": 60}
#: WebP cannot hold a side longer than this; the cap is kept for every format, so whether a
#: file can be written never depends on which format it is.
MAX_OUTPUT_SIDE = 16383
MAX_OUTPUT_PIXELS = 40_000_000  # 160 MB as RGBA while it is encoded
ASSETS_JSON = "assets.json"
STATE_FILE = ".imagebatch-export.json"
LOCK_FILE = ".imagebatch-export.lock"
#: Names of the export root that are the export's own bookkeeping, never an export's file.
RESERVED = (ASSETS_JSON, STATE_FILE, LOCK_FILE)
MAX_PROBLEMS = 50


@dataclass(frozen=True, slots=True)
class Geometry:
    """How one file is cut from its source: a crop box, the size it is scaled to, the canvas."""

    crop: tuple[float, float, float, float]  # left, top, right, bottom in source pixels
    scaled: tuple[int, int]  # the crop is resized to this
    canvas: tuple[int, int]  # the file's size: `scaled`, or a contain box it is centred in

    @property
    def offset(self) -> tuple[int, int]:
        """Where the scaled picture sits on the canvas (non-zero only for contain)."""
        return ((self.canvas[0] - self.scaled[0]) // 2, (self.canvas[1] - self.scaled[1]) // 2)


@dataclass(frozen=True, slots=True)
class Target:
    """One file an export writes: where, from which job, how, and its settings' fingerprint."""

    file: str  # POSIX path under the export root
    export: ExportSettings
    job: Job
    format: str
    geometry: Geometry
    fingerprint: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the file."""
        return self.geometry.canvas


def quality(spec: ExportSettings, fmt: str) -> int | None:
    """The encoder quality of `fmt` in this export (None for PNG)."""
    if fmt == "png":
        return None
    return spec.quality if spec.quality is not None else DEFAULT_QUALITY[fmt]


def geometry(spec: ExportSettings, source: tuple[int, int], width: int | None) -> Geometry:
    """The crop, scale and canvas of one file of `spec` from a source of size `source`.

    Images are never enlarged unless `upscale`: a width above the source's gives the
    source's own width; a cover box larger than the source shrinks (keeping its shape) to
    the largest such box the source holds; a contain box keeps its size and the picture is
    centred in it unscaled.
    """
    w, h = source
    full = (0.0, 0.0, float(w), float(h))
    if spec.size is None:
        if width is None or (width > w and not spec.upscale):
            return Geometry(full, (w, h), (w, h))
        out = (width, max(1, round(h * width / w)))
        return Geometry(full, out, out)
    box_w, box_h = spec.size
    if spec.fit == "contain":
        s = min(box_w / w, box_h / h)
        if s > 1 and not spec.upscale:
            s = 1.0
        scaled = (max(1, min(box_w, round(w * s))), max(1, min(box_h, round(h * s))))
        return Geometry(full, scaled, (box_w, box_h))
    s = max(box_w / w, box_h / h)
    if s > 1 and not spec.upscale:
        k = min(w / box_w, h / box_h)
        box_w, box_h = max(1, round(box_w * k)), max(1, round(box_h * k))
        s = max(box_w / w, box_h / h)
    crop_w, crop_h = min(box_w / s, float(w)), min(box_h / s, float(h))
    fx, fy = spec.focus
    left = min(max(fx * w - crop_w / 2, 0.0), w - crop_w)
    top = min(max(fy * h - crop_h / 2, 0.0), h - crop_h)
    if (box_w, box_h) == (round(crop_w), round(crop_h)):
        # at the source's own scale: whole pixels, so the file is a plain crop, not resampled
        crop_w, crop_h = float(box_w), float(box_h)
        left = float(min(max(round(left), 0), w - box_w))
        top = float(min(max(round(top), 0), h - box_h))
    return Geometry((left, top, left + crop_w, top + crop_h), (box_w, box_h), (box_w, box_h))


def job_fields(job: Job) -> dict[str, str]:
    """The job's placeholders, made safe, as its image path has them."""
    request = job.request
    fields = {name: safe(value) for name, value in job.vars}
    fields.update(id=job.id, ext=job.ext, aspect=aspect_of(request),
                  vars=safe("-".join(v for _, v in job.vars)), seed=str(job.seed),
                  index=str(job.index), key=job.key[:12])
    return fields


def render_path(spec: ExportSettings, fields: dict[str, str], size: tuple[int, int],
                fmt: str) -> tuple[str, str | None]:
    """(path, None) for a file of `spec`, or (the raw text, why it cannot be a path)."""
    path = spec.path.format_map({**fields, "width": str(size[0]), "height": str(size[1]),
                                 "format": fmt, "export": spec.name})
    segments = [s for s in path.split("/") if s]
    if not segments or "." in segments or ".." in segments:
        return path, "is empty or climbs out with '..'"
    if any(s.startswith(TMP_PREFIX) for s in segments):
        return path, f"has a part starting with {TMP_PREFIX!r}, the prefix of temp files"
    if len(path) > 1000 or any(len(s.encode()) > 200 for s in segments):
        return path, f"is too long ({len(path)} chars)"
    for s in segments:
        why = windows_problem(s)
        if why:
            return path, f"has a part {s!r} that Windows cannot hold: it {why}"
    joined = "/".join(segments)
    if joined.casefold() in RESERVED:
        return path, "is a file the export keeps for itself"
    return joined, None


def fingerprint(spec: ExportSettings, job: Job, fmt: str, geo: Geometry) -> str:
    """What a file's bytes depend on besides its source's: the job, format and settings."""
    doc = {
        "recipe": RECIPE, "key": job.key, "format": fmt, "quality": quality(spec, fmt),
        "crop": [round(v, 6) for v in geo.crop], "scaled": list(geo.scaled),
        "canvas": list(geo.canvas), "background": list(spec.background),
        "metadata": spec.metadata,
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def _size_problem(size: tuple[int, int]) -> str | None:
    w, h = size
    if max(w, h) > MAX_OUTPUT_SIDE:
        return f"would be {w}x{h} pixels; a side may be at most {MAX_OUTPUT_SIDE:,}"
    if w * h > MAX_OUTPUT_PIXELS:
        return f"would be {w}x{h} pixels; a file may have at most {MAX_OUTPUT_PIXELS:,}"
    return None


class _Collector:
    """Targets by path, with every clash between them reported once per export."""

    def __init__(self, plan: Plan, selected: bool) -> None:
        self.plan = plan
        self.selected = selected  # export time: the images are the ones chosen
        self.problems: list[Problem] = []
        self.reported: set[tuple[str, str]] = set()
        self.by_path: dict[str, Target] = {}
        self.folders: dict[str, str] = {}  # casefolded folder -> a file under it
        self.targets: list[Target] = []

    def add_problem(self, spec: ExportSettings, field: str, kind: str, message: str) -> None:
        if (spec.where, kind) in self.reported:
            return  # one problem of each kind per export: the first job shows it
        self.reported.add((spec.where, kind))
        loc = {"path": spec.path_loc, "size": spec.size_loc, "width": spec.size_loc}.get(
            field, spec.loc)
        self.problems.append(Problem(self.plan.source, loc[0], loc[1], f"{spec.where}.{field}",
                                     message))
        if len(self.problems) >= MAX_PROBLEMS:
            raise ManifestError(self.problems)

    def add(self, spec: ExportSettings, job: Job, fmt: str, geo: Geometry) -> None:
        bad = _size_problem(geo.canvas)
        if bad:
            field = "size" if spec.size else "width"
            self.add_problem(spec, field, "size", f"{job.path}: the file {bad}")
            return
        path, why = render_path(spec, job_fields(job), geo.canvas, fmt)
        if why:
            self.add_problem(spec, "path", "path", f"{spec.path!r}: for {job.path} the path "
                                                   f"{path!r} {why}")
            return
        key = path.casefold()
        target = Target(path, spec, job, fmt, geo, fingerprint(spec, job, fmt, geo))
        other = self.by_path.get(key)
        if other is not None:
            if other.export is spec and other.job is job and other.format == fmt \
                    and other.geometry == geo:
                return  # two widths above the source's both give the source's own size
            self._clash(target, other)
            return
        if key in self.folders:
            self.add_problem(spec, "path", "folder",
                             f"{path!r} would be both a file and the folder of "
                             f"{self.folders[key]!r}")
            return
        self.by_path[key] = target
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i]).casefold()
            if folder in self.by_path:
                self.add_problem(spec, "path", "folder",
                                 f"{self.by_path[folder].file!r} would be both a file and "
                                 f"the folder of {path!r}")
            self.folders.setdefault(folder, path)
        self.targets.append(target)

    def _clash(self, new: Target, old: Target) -> None:
        spec = new.export
        same_case = "" if new.file == old.file else \
            f" (as {old.file!r}: they differ only in letter case, one name on macOS and Windows)"
        if old.export is not spec:
            self.add_problem(spec, "path", "clash",
                             f"{new.file!r} is also written by {old.export.where} "
                             f"({old.export.name!r}){same_case}; two exports cannot write one "
                             "file: add {export} to a path")
        elif old.job is not new.job:
            if not self.selected and spec.source != "all":
                return  # only picked images are exported: judged when they are known
            how = {"picks": "both are picked: pick one, or ",
                   "rating": "both are rated high enough: rate one lower, or "}
            self.add_problem(spec, "path", "clash",
                             f"{new.file!r} would be written for both {old.job.path} and "
                             f"{new.job.path}{same_case}; {how.get(spec.source, '')}add "
                             f"{_telling_apart(spec.path, old.job, new.job)} to the path")
        else:
            self.add_problem(spec, "path", "clash",
                             f"{new.file!r} would be written twice for {new.job.path} "
                             f"({old.format} {old.geometry.canvas[0]}x"
                             f"{old.geometry.canvas[1]} and {new.format} "
                             f"{new.geometry.canvas[0]}x{new.geometry.canvas[1]}){same_case}; "
                             "add {width} and {format} to the path")


def _telling_apart(template: str, a: Job, b: Job) -> str:
    """The placeholders a path template lacks that would give jobs `a` and `b` two names:
    only ones that differ between them and are not in the template already."""
    telling = [name for name, differs in (("{seed}", a.seed != b.seed),
                                          ("{vars}", a.vars != b.vars),
                                          ("{id}", a.id != b.id))
               if differs and name not in template]
    return " or ".join(telling) if telling else "{index}"


def widths_of(spec: ExportSettings) -> Sequence[int | None]:
    """The widths an export asks for; [None] when it keeps the size or fills a box."""
    return spec.widths or [None]


def plan_targets(plan: Plan, chosen: Iterable[tuple[ExportSettings, Job, tuple[int, int]]],
                 ) -> list[Target]:
    """Every file of the chosen (export, job, source size); ManifestError on any clash."""
    col = _Collector(plan, selected=True)
    for spec, job, size in chosen:
        for width in widths_of(spec):
            geo = geometry(spec, size, width)
            for fmt in spec.formats:
                col.add(spec, job, fmt, geo)
    if col.problems:
        raise ManifestError(col.problems)
    return sorted(col.targets, key=lambda t: t.file)


def check(plan: Plan, jobs: Sequence[Job] | None = None) -> None:
    """Refuse, before anything is written, export paths that climb out, are not valid file
    names, or clash: two exports writing one file, or one export writing a file twice.

    Sizes are those the API makes for each request. An export `from: all` must give every
    job its own files; one exporting picks may give two jobs one path (a variant's picked
    seed, say), and is judged again at export time against what is picked.
    """
    if not plan.exports:
        return
    col = _Collector(plan, selected=False)
    for job in plan.jobs if jobs is None else jobs:
        size = apispec.pixel_size(job.request)
        for spec in plan.exports:
            for width in widths_of(spec):
                geo = geometry(spec, size, width)
                for fmt in spec.formats:
                    col.add(spec, job, fmt, geo)
    if col.problems:
        raise ManifestError(sorted(col.problems, key=lambda p: (p.line, p.column)))

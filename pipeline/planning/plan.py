"""PURE: Manifest -> Plan (tuple of Job); keys, seeds, paths, shards.

Nothing here touches the disk, the network, the clock or the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import string
from dataclasses import dataclass
from typing import Any, cast

from ..errors import ManifestError, Problem
from . import stabilityform
from .apispec import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    SIZE_ASPECTS,
    Provider,
    default_provider,
    extension,
)


def canonical_json(body: dict[str, Any]) -> str:
    """The canonical JSON text of a request body: sorted keys, no spaces, UTF-8 as itself."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_key(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a request body."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """The manifest's `output:` block."""

    path: str = "{id}/{vars}/{seed}.{ext}"
    thumbnail: int = 256
    label: str = "{id} {vars} #{seed}"
    per_page: int = 100


@dataclass(frozen=True, slots=True)
class Job:
    """One request body plus where its image goes."""

    index: int  # position in the whole plan (before sharding)
    id: str  # the manifest job's id
    key: str  # job_key(request)
    path: str  # POSIX path relative to outputs/<name>/images/
    body: str  # canonical_json(request): exactly what is sent
    seed: int
    vars: tuple[tuple[str, str], ...]  # matrix and zip values, manifest order
    label: str  # caption for contact sheets
    # whose request shape `body` is (see Provider.key_body); the default provider unless named
    provider: Provider = dataclasses.field(default_factory=default_provider)
    # The input image of an image-to-image job: its file, read when sending. Its SHA-256 is
    # in the body (`image`), so the key changes with the file's bytes, not with its path.
    image: str | None = None
    # The same job as sent to the other providers of a mixed pool: each its own key and
    # body, one path. A job recorded ok under any of them is done.
    variants: tuple[Job, ...] = ()

    @property
    def request(self) -> dict[str, Any]:
        """The request body as a dict (a fresh copy each call)."""
        return cast("dict[str, Any]", json.loads(self.body))

    @property
    def ext(self) -> str:
        """File extension of the image: png, jpg or webp."""
        return extension(self.request.get("output_format"))

    def for_provider(self, provider: Provider) -> Job:
        """This job as sent to `provider` (itself, or the variant of that provider)."""
        if provider == self.provider:
            return self
        for variant in self.variants:
            if variant.provider == provider:
                return variant
        raise ValueError(f"job {self.path} was not planned for the {provider.name} provider")

    @property
    def keys(self) -> tuple[str, ...]:
        """Its key and its variants' keys: every request that makes this job's image."""
        return (self.key, *(v.key for v in self.variants))

    @property
    def variant(self) -> str:
        """The job id and its variable values: a row of a seed-sweep grid."""
        return " ".join([self.id, *(v for _, v in self.vars)]).strip()


@dataclass(frozen=True, slots=True)
class Plan:
    """The expanded, ordered job list of one manifest (possibly one shard of it)."""

    name: str
    model: str
    source: str  # manifest file as given
    output: OutputSettings
    jobs: tuple[Job, ...]
    total: int  # jobs in the whole plan, before sharding
    shard: tuple[int, int] | None = None  # (K, N), 1-based K
    exports: tuple[ExportSettings, ...] = ()  # the manifest's `exports:`
    # (job id, brief) of each job whose prompts a chat model wrote from a brief, manifest
    # order: the sheets, index.html and the review page head its group with it. Not in any
    # key: the prompts written from it are.
    briefs: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------------------
# The validated manifest, as pure values (imagebatch.planning.manifest builds these from YAML).

Loc = tuple[int, int]  # (line, column), 1-based, of a value in the manifest file

#: The prefix of the store's temp files, which every run deletes as leftovers of a killed
#: one (store.TMP_PREFIX is this). An image path with a part starting with it would be
#: deleted at the next start and made again on every run, so expand() refuses such paths.
TMP_PREFIX = ".tmp-"

#: Placeholders every template knows; variables may not take these names.
BUILTINS: tuple[str, ...] = ("id", "seed", "index", "ext", "key", "aspect", "vars")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Names Windows keeps for devices, whatever follows a dot (con.png is the console too).
_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                      *(f"LPT{i}" for i in range(1, 10))})


#: The formats an export writes, and the placeholders its path knows besides the job's.
EXPORT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp", "avif")
EXPORT_PLACEHOLDERS: tuple[str, ...] = ("width", "height", "format", "export")
#: Where an export's files go, under the export root, when its `path:` is not given.
DEFAULT_EXPORT_PATH = "{export}/{id}/{vars}/{seed}-{width}x{height}.{format}"


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """One entry of the manifest's `exports:`: which images, and the files made of each."""

    name: str
    source: str = "picks"  # picks | all | rating
    rating: int = 0  # with source "rating": the least rating exported (1..5)
    path: str = DEFAULT_EXPORT_PATH
    widths: tuple[int, ...] = ()  # resize to each width (height follows)
    size: tuple[int, int] | None = None  # or an exact box, filled by `fit`
    fit: str = "cover"  # cover (fill and crop) | contain (fit inside and pad)
    focus: tuple[float, float] = (0.5, 0.5)  # the point a cover crop keeps, 0..1 of each side
    formats: tuple[str, ...] = ("webp",)
    quality: int | None = None  # None: the format's default
    background: tuple[int, int, int] = (255, 255, 255)
    upscale: bool = False
    metadata: str = "keep"  # keep | strip
    where: str = "exports[0]"  # field path, for messages
    loc: Loc = (1, 1)  # of the entry
    path_loc: Loc = (1, 1)  # of its path (the entry's when it has none)
    size_loc: Loc = (1, 1)  # of its width or size (the entry's when it has neither)


@dataclass(frozen=True, slots=True)
class Seeds:
    """A job's seeds in one of the manifest's forms: explicit, start/count, or random."""

    values: tuple[int, ...] = ()
    start: int = 0
    count: int = 0
    random: int = 0

    def __len__(self) -> int:
        if self.random:
            return self.random
        return self.count if self.count else len(self.values)

    def resolve(self, name: str, job_id: str) -> tuple[int, ...]:
        """The seeds themselves; `{random: N}` derived from name, job id and index by SHA-256."""
        if self.random:
            return tuple(random_seed(name, job_id, i) for i in range(self.random))
        if self.count:
            return tuple(range(self.start, self.start + self.count))
        return self.values


def random_seed(name: str, job_id: str, index: int) -> int:
    """The index-th `{random: N}` seed of a job: stable across processes, machines, Pythons."""
    digest = hashlib.sha256(f"imagebatch-seed\0{name}\0{job_id}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_SEED + 1  # 1..MAX_SEED, never 0


def draw_seed(name: str, job_id: str, axis: str) -> int:
    """The default seed of an axis's draw: derived like `{random: N}` seeds, from the
    manifest name, the job id and the axis name, so every machine draws the same values."""
    digest = hashlib.sha256(f"imagebatch-draw\0{name}\0{job_id}\0{axis}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_SEED + 1


def draw(values: tuple[str, ...], count: int, seed: int) -> tuple[str, ...]:
    """`count` of `values` drawn without replacement, kept in their written order.

    Each value is ranked by the SHA-256 of the seed and the value itself (not its position),
    so adding, removing or editing one line of a values file changes at most the one drawn
    value it touches: every other job keeps its value, and so its key.
    """
    if count >= len(values):
        return values

    def rank(value: str) -> bytes:
        return hashlib.sha256(f"imagebatch-draw\0{seed}\0{value}".encode()).digest()

    chosen = set(sorted(values, key=rank)[:count])
    return tuple(v for v in values if v in chosen)


@dataclass(frozen=True, slots=True)
class Axis:
    """One swept value list of `matrix:` or `zip:`; a request field or a variable."""

    name: str
    values: tuple[str, ...]
    field: bool  # True: sets that request field; False: a {variable}
    loc: Loc
    # What {vars} and paths show for each value, when not the value itself: prompts
    # written from a brief are p1, p2, ... (a whole prompt would make a path too long)
    labels: tuple[str, ...] = ()

    def shown(self, value: str) -> str:
        """The value as {vars}, paths and labels show it."""
        return self.labels[self.values.index(value)] if self.labels else value


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One entry of `jobs:`, validated; `groups` are crossed, each group zips its axes."""

    id: str
    where: str  # field path, e.g. jobs[2]
    fields: tuple[tuple[str, Any], ...]  # request fields set by defaults and the job itself
    groups: tuple[tuple[Axis, ...], ...]  # a matrix axis is a group of one; zip is one group
    seeds: Seeds
    loc: Loc  # of the job's id
    prompt_loc: Loc
    image_path: str | None = None  # the input image's file, for an image-to-image job
    # The input image's size in bytes, its format and where `image:` is written: expansion
    # measures each Stability request as it will be sent against Stability's limit.
    image_bytes: int = 0
    image_format: str = ""
    image_loc: Loc | None = None

    @property
    def count(self) -> int:
        """How many jobs this entry expands to, computed without expanding it."""
        n = len(self.seeds)
        for group in self.groups:
            n *= len(group[0].values)
        return n


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest: everything expansion needs, nothing it must re-check."""

    source: str
    name: str
    model: str
    output: OutputSettings
    jobs: tuple[JobSpec, ...]
    path_loc: Loc = (1, 1)  # of output.path, for path errors
    label_loc: Loc = (1, 1)  # of output.sheet.label
    exports: tuple[ExportSettings, ...] = ()
    briefs: tuple[tuple[str, str], ...] = ()  # (job id, brief) of its `prompts:` jobs


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Whether a job key falls in shard (K, N): N shards partition any plan by key."""
    if shard is None:
        return True
    k, n = shard
    return int(key[:16], 16) % n == k - 1


def safe(value: str) -> str:
    """A value made safe for a path segment: letters, digits, . _ - kept, others become -."""
    return _UNSAFE.sub("-", value)


#: Extensions of image files: a thumbnail's name replaces them with `.jpg` (see image_stem).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_stem(path: str) -> str:
    """`path` without its image extension (`fox/7.png` -> `fox/7`), the name its thumbnail
    takes; a path with no image extension is its own stem."""
    head, _, name = path.rpartition("/")
    base, dot, suffix = name.rpartition(".")
    if dot and base and f".{suffix.lower()}" in IMAGE_SUFFIXES:
        name = base
    return f"{head}/{name}" if head else name


def windows_problem(part: str) -> str | None:
    """Why Windows cannot hold a file or folder named `part`, or None when it can."""
    if part.endswith((".", " ")):
        # Windows drops them: `a.` would be the file `a`, another job's
        return "ends in '.' or ' ', which Windows drops (so it names another file)"
    stem = part.split(".", 1)[0].rstrip(" ")
    if len(stem) in (3, 4) and stem.upper() in _DEVICES:
        return ("is a device name on Windows (CON, PRN, AUX, NUL, COM1-9 and LPT1-9, "
                "with any extension)")
    return None


def aspect_of(request: dict[str, Any]) -> str:
    """The request's aspect ratio as the `{aspect}` placeholder writes it: 16x9."""
    ratio = request.get("aspect_ratio") or SIZE_ASPECTS.get(request.get("size") or "", "1:1")
    return str(ratio).replace(":", "x")


def _problem(m: Manifest, loc: Loc, path: str, message: str) -> Problem:
    return Problem(m.source, loc[0], loc[1], path, message)


def expand(manifest: Manifest, *, shard: tuple[int, int] | None = None,
           providers: tuple[Provider, ...] | None = None) -> Plan:
    """Manifest -> Plan: jobs in manifest order, canonical bodies, keys, safe unique paths.

    Each job is planned for `providers[0]`, with a variant for each other provider (a
    mixed pool); no providers: the default one. Each key is the hash of its provider's
    `key_body`. Raises ManifestError for what only expansion can find: rendered prompts
    over the limit, requests over a provider's size limit as sent (Stability's 10 MiB),
    paths that climb out, two jobs with one path or one request.
    """
    providers = providers or (default_provider(),)
    others = tuple(p for p in providers[1:] if p != providers[0])
    max_seed = min(p.max_seed for p in providers)
    lowest = min(providers, key=lambda p: p.max_seed)
    m = manifest
    out = m.output
    problems: list[Problem] = []
    jobs: list[Job] = []
    paths: dict[str, int] = {}
    folded: dict[str, int] = {}
    stems: dict[str, int] = {}  # casefolded image_stem -> index: one thumbnail name each
    keys: dict[str, int] = {}
    dirs: dict[str, str] = {}  # casefolded folder -> as first written
    index_paths: dict[int, str] = {}  # plan index -> path, for messages
    index = 0
    for spec in m.jobs:
        seeds = spec.seeds.resolve(m.name, spec.id)
        base = dict(spec.fields)
        combos = itertools.product(*(_group_rows(g) for g in spec.groups))
        for combo in combos:
            request = dict(base)
            variables: dict[str, str] = {}
            names: list[tuple[str, str]] = []
            for row in combo:
                for axis, value in row:
                    names.append((axis.name, axis.shown(value)))
                    if axis.field:
                        if axis.name in ("size", "aspect_ratio"):
                            # a swept size or ratio replaces the other one inherited from above
                            other = "aspect_ratio" if axis.name == "size" else "size"
                            if not any(a.name == other for r in combo for a, _ in r):
                                request.pop(other, None)
                        request[axis.name] = value
                    else:
                        variables[axis.name] = value
            bad = _render_text_fields(request, variables)
            if bad:
                problems.append(_problem(m, spec.prompt_loc, f"{spec.where}.{bad[0]}", bad[1]))
                index += len(seeds)
                continue
            request["model"] = m.model
            vars_raw = "-".join(v for _, v in names)
            too_big = _too_big(spec, request, seeds, providers)
            if too_big:
                problems.append(_problem(m, spec.image_loc or spec.prompt_loc,
                                         f"{spec.where}.{'image' if spec.image_path else 'prompt'}",
                                         f"{_what(spec.id, max(seeds), vars_raw)}: {too_big}"))
                index += len(seeds)
                continue
            aspect = aspect_of(request)
            ext = extension(request.get("output_format"))
            # only the seed differs between this combination's bodies: encode the rest once
            # ("seed" is a key of ours, so '"seed":0' cannot occur inside an escaped string)
            request["seed"] = 0
            head, tail = canonical_json(providers[0].key_body(request)).split(
                '"seed":0', 1)
            head += '"seed":'
            other_parts = []
            for provider in others:
                o_head, o_tail = canonical_json(provider.key_body(request)).split(
                    '"seed":0', 1)
                other_parts.append((provider, o_head + '"seed":', o_tail))
            fixed = {"id": spec.id, "ext": ext, "aspect": aspect}
            path_map = {n: safe(v) for n, v in names} | fixed | {"vars": safe(vars_raw)}
            label_map = dict(names) | fixed | {"vars": vars_raw}
            frozen_vars = tuple(names)
            for template, loc, field, mapping in ((out.path, m.path_loc, "output.path", path_map),
                                                  (out.label, m.label_loc, "output.sheet.label",
                                                   label_map)):
                missing = _missing(template, mapping)
                if missing:  # the loader refuses this first; a Manifest built directly may not
                    raise ManifestError([_problem(
                        m, loc, field, f"{template!r}: job {spec.id!r} ({spec.where}) has no "
                                       f"{{{missing}}}; a variable used here must be a matrix "
                                       "or zip axis of every job")])
            for seed in seeds:
                body = f"{head}{seed}{tail}"
                key = hashlib.sha256(body.encode()).hexdigest()
                path_map["seed"] = label_map["seed"] = str(seed)
                path_map["index"] = label_map["index"] = str(index)
                path_map["key"] = label_map["key"] = key[:12]
                path = out.path.format_map(path_map)
                label = " ".join(out.label.format_map(label_map).split())
                segments = [s for s in path.split("/") if s]
                windows = next(((s, w) for s in segments if (w := windows_problem(s))), None)
                where = spec.where
                if not segments or "." in segments or ".." in segments:
                    problems.append(_problem(
                        m, spec.loc, where, f"{_what(spec.id, seed, vars_raw)}: output path "
                                            f"{path!r} is empty or climbs out with '..'"))
                elif TMP_PREFIX in path and any(s.startswith(TMP_PREFIX) for s in segments):
                    problems.append(_problem(
                        m, spec.loc, where, f"{_what(spec.id, seed, vars_raw)}: output path "
                                            f"{path!r} has a part starting with "
                                            f"{TMP_PREFIX!r}, the prefix of imagebatch's temp "
                                            "files: it would be deleted at every start"))
                elif len(path) > 1000 or (len(path.encode()) > 200  # cheap test first
                                          and any(len(s.encode()) > 200 for s in segments)):
                    problems.append(_problem(
                        m, spec.loc, where, f"{_what(spec.id, seed, vars_raw)}: output path "
                                            f"is too long ({len(path)} chars)"))
                elif windows is not None:
                    problems.append(_problem(
                        m, spec.loc, where, f"{_what(spec.id, seed, vars_raw)}: output path "
                                            f"{path!r} has a part {windows[0]!r} that Windows "
                                            f"cannot hold: it {windows[1]}"))
                else:
                    path = "/".join(segments)
                    folded_path = path.casefold()
                    clash = paths.get(path, folded.get(folded_path))
                    folded_stem = image_stem(path).casefold()
                    twin = stems.get(folded_stem)
                    if key in keys:
                        first = keys[key]
                        problems.append(_problem(
                            m, spec.loc, where,
                            f"{_what(spec.id, seed, vars_raw)}: sends the same request as "
                            f"job #{first} ({index_paths[first]}); "
                            "a variable that appears in no prompt changes nothing"))
                    elif clash is not None:
                        problems.append(_problem(
                            m, spec.loc, where,
                            f"{_what(spec.id, seed, vars_raw)}: output path {path!r} collides "
                            f"with {index_paths[clash]!r}; add {{seed}}, {{vars}} or {{key}} "
                            "to output.path"))
                    elif twin is not None:
                        # thumbs/ mirrors images/ without the extension: a/1.png and a/1.webp
                        # would share thumbs/a/1.jpg, and each would show the other's picture
                        problems.append(_problem(
                            m, spec.loc, where,
                            f"{_what(spec.id, seed, vars_raw)}: output path {path!r} differs "
                            f"from {index_paths[twin]!r} only in its extension, so both "
                            "would have one thumbnail; put what tells them apart (such as "
                            "{vars}) before the extension in output.path"))
                    elif folded_path in dirs:
                        problems.append(_problem(
                            m, spec.loc, where,
                            f"{_what(spec.id, seed, vars_raw)}: output path {path!r} is both "
                            "an image and a folder of other images"
                            f"{_case_note(path, dirs[folded_path])}"))
                    if len(problems) > 50:
                        raise ManifestError(problems)
                    paths[path] = index
                    folded[folded_path] = index
                    stems[folded_stem] = index
                    keys[key] = index
                    index_paths[index] = path
                    for i in range(1, len(segments)):
                        folder = "/".join(segments[:i])
                        dirs.setdefault(folder.casefold(), folder)
                if seed > max_seed:
                    problems.append(_problem(
                        m, spec.loc, where, f"{_what(spec.id, seed, vars_raw)}: seed {seed} is "
                                            f"over the {lowest.name} provider's maximum, "
                                            f"{max_seed}"))
                if problems:  # keep indexing; build nothing more once something is wrong
                    index += 1
                    continue
                variants = tuple(
                    Job(index, spec.id, hashlib.sha256(f"{oh}{seed}{ot}".encode()).hexdigest(),
                        path, f"{oh}{seed}{ot}", seed, frozen_vars, label, provider,
                        spec.image_path)
                    for provider, oh, ot in other_parts)
                jobs.append(Job(index, spec.id, key, path, body, seed, frozen_vars, label,
                                providers[0], spec.image_path, variants))
                index += 1
    if problems:
        raise ManifestError(problems)
    for path in paths:  # a file where another job needs a folder (in any letter case)
        as_folder = dirs.get(path.casefold())
        if as_folder is not None:
            raise ManifestError([_problem(
                m, m.path_loc, "output.path",
                f"{path!r} is both an image and a folder of other images"
                f"{_case_note(path, as_folder)}")])
    total = len(jobs)
    chosen = tuple(j for j in jobs if in_shard(j.key, shard)) if shard else tuple(jobs)
    return Plan(m.name, m.model, m.source, out, chosen, total, shard, m.exports, m.briefs)


def _too_big(spec: JobSpec, request: dict[str, Any], seeds: tuple[int, ...],
             providers: tuple[Provider, ...]) -> str | None:
    """Why the requests of one combination are over a provider's size limit, or None.

    Measured as sent (the whole body, input image included) with the longest of the
    seeds, so no seed of it can be refused with 413 after it was paid for in waiting.
    """
    fields = {**request, "seed": max(seeds)}
    name = os.path.basename(spec.image_path) if spec.image_path else "image"
    for provider in providers:
        why = provider.oversize(fields, spec.image_bytes if spec.image_path else None, name,
                                spec.image_format)
        if why:
            shrink = (f"shrink the input image {name!r} ({stabilityform.SHRINK})"
                      if spec.image_path else "shorten its prompts")
            return f"{why}: {shrink}"
    return None


def _case_note(image: str, folder: str) -> str:
    """How an image and a folder whose names differ only in letter case are one."""
    if image == folder:
        return ""
    return (f" (the folder {folder!r} differs only in letter case, and macOS and Windows "
            "see one name)")


def _missing(template: str, mapping: dict[str, str]) -> str | None:
    """The first placeholder of a template the mapping has no value for."""
    if "{" not in template:
        return None
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None and field not in mapping and field not in ("seed", "index", "key"):
            return field
    return None


def _what(job_id: str, seed: int, vars_raw: str) -> str:
    """How an error names one job: id, seed and variable values."""
    return f"{job_id} seed {seed}" + (f" ({vars_raw})" if vars_raw else "")


def _group_rows(group: tuple[Axis, ...]) -> list[tuple[tuple[Axis, str], ...]]:
    """The rows of one group: each axis alone, or zipped axes element by element."""
    return [tuple((axis, axis.values[i]) for axis in group) for i in range(len(group[0].values))]


def _render_text_fields(
    request: dict[str, Any], variables: dict[str, str],
) -> tuple[str, str] | None:
    """Fill {variables} in prompt and negative_prompt; (field, message) when one is too long."""
    for name in ("prompt", "negative_prompt"):
        text = request.get(name)
        if text is None:
            continue
        if "{" in text or "}" in text:
            text = text.format_map(variables)
            request[name] = text
        if len(text) > MAX_PROMPT_CHARS:
            return name, (f"is {len(text):,} characters once variables are filled in; "
                          f"the API allows at most {MAX_PROMPT_CHARS:,}")
    return None

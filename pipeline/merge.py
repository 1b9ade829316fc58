"""`imagebatch merge`: combine the outputs of shard runs into one folder, then post-process.

Each shard wrote `<shard out>/<name>/images/...` and `results.jsonl`. Merging copies every
image a shard recorded `ok` (checked against its recorded SHA-256, read from the plan's
path for the job inside the shard's images/), writes one `results.jsonl` holding the latest
record per key, a summary of the whole plan, and rebuilds thumbnails, sheets and the index
from the unsharded plan. A destination that already holds outputs is one more source.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from pipeline.config import DEFAULT_PREFIX
from pipeline.errors import StoreError, UsageError
from pipeline.manifest import DEFAULT_MAX_JOBS, load_plans
from pipeline.plan import Job, Plan
from pipeline.post import build_all
from pipeline.store import (
    RESULTS,
    SUMMARY,
    Record,
    Store,
    open_locked,
    read_records,
    write_file,
)
from pipeline.summary import Failure, PlanReport, RunReport, summary_json


def _shard_folders(sources: Sequence[Path]) -> dict[str, list[Path]]:
    """name -> the folders of that name in each source (a source is an `--out` folder)."""
    found: dict[str, list[Path]] = {}
    for src in sources:
        if not src.is_dir():
            raise UsageError(f"{src}: no such folder (give the --out folders of the shard runs)")
        if (src / RESULTS).is_file():  # a `<out>/<name>` folder given directly
            found.setdefault(src.name, []).append(src)
            continue
        names = sorted(p.parent.name for p in src.glob(f"*/{RESULTS}"))
        if not names:
            raise UsageError(f"{src}: holds no run outputs (no */{RESULTS})")
        for name in names:
            found.setdefault(name, []).append(src / name)
    return found


def _manifest_of(folders: list[Path]) -> str | None:
    for folder in folders:
        try:
            doc = json.loads((folder / SUMMARY).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("manifest"), str):
            return doc["manifest"]
    return None


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest() if hasattr(
                hashlib, "file_digest") else hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def _image_path(folder: Path, job: Job) -> Path:
    """Where `job`'s image is under `folder`; StoreError when that would leave its images/."""
    return Store(folder.parent, folder.name, "").image_path(job)


def _records(folder: Path) -> list[Record]:
    return list(read_records(folder / RESULTS))  # an unreadable file is a StoreError there


def _copy_verified(src: Path, target: Path, sha256: str) -> bool:
    """Make `target` hold `src` when `src` still has `sha256`; whether it now does."""
    if src == target:
        return _sha256(target) == sha256
    try:
        data = src.read_bytes()
    except OSError:
        return False
    # hash the bytes that are copied, not the file: it could change in between
    if hashlib.sha256(data).hexdigest() != sha256:
        return False  # changed since it was recorded: not done
    if _sha256(target) != sha256:
        write_file(target, data)
    return True


def merge_one(plan: Plan, folders: list[Path], dest: Path) -> PlanReport:
    """Merge one plan's shard folders into `dest` (= `<out>/<name>`); the merged summary.

    What `dest` already holds counts as one more source, ahead of the shards, so merging
    into a finished outputs folder keeps every job it has done.
    """
    has_own = (dest / RESULTS).is_file()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write to {dest}: {exc.strerror or exc}") from None
    with open_locked(dest / RESULTS):  # not while a run is writing there
        return _merge_locked(plan, folders, dest, has_own)


def _merge_locked(plan: Plan, folders: list[Path], dest: Path, has_own: bool) -> PlanReport:
    by_key = {job.key: job for job in plan.jobs}
    candidates: dict[str, list[Record]] = {}  # per key, in source order
    origin: dict[int, Path] = {}  # id(record) -> the folder it came from
    requests = 0
    for folder in ([dest] if has_own else []) + folders:
        for rec in _records(folder):
            if rec.key in by_key:
                candidates.setdefault(rec.key, []).append(rec)
                origin[id(rec)] = folder
    for folder in folders:
        try:
            requests += int(json.loads((folder / SUMMARY).read_text()).get("requests", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    lines: list[bytes] = []
    ok = failed = 0
    failures: list[Failure] = []
    backends: set[str] = set()
    for job in plan.jobs:
        recs = candidates.get(job.key, [])
        target = _image_path(dest, job)
        # an ok record wins over a failure; among ok records the later source's wins, if its
        # image is still the one recorded. The path is the plan's, never the record's.
        chosen = next((rec for rec in reversed(recs) if rec.status == "ok" and rec.sha256
                       and _copy_verified(_image_path(origin[id(rec)], job), target,
                                          rec.sha256)), None)
        if chosen is not None:
            ok += 1
        elif recs and all(rec.status != "ok" for rec in recs):
            chosen = recs[-1]
            failed += 1
            failures.append(Failure(job.key, job.path, chosen.error))
        else:
            continue  # missing or changed since it was recorded: not done
        backends.add(chosen.backend)
        lines.append(replace(chosen, path=job.path).to_line())
    write_file(dest / RESULTS, b"".join(lines))
    summary = PlanReport(
        name=plan.name, manifest=plan.source, backend=",".join(sorted(backends)) or None,
        shard=None, out=str(dest), planned=len(plan.jobs), succeeded=ok, skipped=0,
        failed=failed, pending=len(plan.jobs) - ok - failed, requests=requests, seconds=0.0,
        interrupted=False, failures=tuple(failures),
        merged_from=tuple(str(f) for f in folders),
    )
    write_file(dest / SUMMARY, summary_json(summary).encode())
    return summary


def merge_command(sources: Sequence[str], out: str, *, manifests: Sequence[str] = (),
                  max_jobs: int = DEFAULT_MAX_JOBS, env_prefix: str = DEFAULT_PREFIX,
                  post: bool = True, env: Mapping[str, str] | None = None) -> RunReport:
    """`imagebatch merge OUT... --out DIR`: merge every plan's shard folders; the report."""
    env = os.environ if env is None else env
    dest_root = Path(out)
    if dest_root.exists() and not dest_root.is_dir():
        raise UsageError(f"--out {out}: not a folder")
    src_paths = [Path(s) for s in sources]
    for src in src_paths:
        if src.resolve() == dest_root.resolve():
            raise UsageError(f"--out {out} is one of the folders being merged; choose another")
    folders = _shard_folders(src_paths)
    # Checked for every name before anything is written, so a refusal leaves no half merge.
    for name, group in folders.items():
        dest = dest_root / name
        if any(dest.resolve() == folder.resolve() for folder in group):
            raise UsageError(f"--out {out}: {dest} is one of the folders being merged; "
                             "choose another")
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"--out {out}: {dest} is not a folder")
    paths = list(manifests)
    if not paths:
        for name, group in folders.items():
            found = _manifest_of(group)
            if found is None or not Path(found).is_file():
                raise UsageError(f"cannot tell which manifest made {name!r}; pass --manifest")
            paths.append(found)
    plans = {p.name: p for p in load_plans(paths, env, env_prefix, max_jobs=max_jobs,
                                          shard=None)}
    for name in folders:
        if name not in plans:
            raise UsageError(f"no manifest given for {name!r} (names: {', '.join(plans)})")
    merged = []
    for name, group in folders.items():
        plan = plans[name]
        merged.append(merge_one(plan, group, dest_root / name))
        if post:
            build_all(plan, dest_root / name)
    return RunReport(tuple(merged))

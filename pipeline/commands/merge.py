"""`imagebatch merge`: combine the outputs of shard runs into one folder, then post-process.

Each shard wrote `<shard out>/<name>/images/...` and `results.jsonl`. Merging judges every
job in every source by the one definition of done (`store.job_states`, against whichever
backend made each image: shards may have run against different ones), copies the image of
each job done in some source (the later source wins; the bytes copied are checked against
the recorded SHA-256), writes one `results.jsonl` holding the record that decided each job,
a summary of the whole plan, and rebuilds thumbnails, sheets and the index from the
unsharded plan. A destination that already holds outputs is one more source, the first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from .. import version
from ..errors import StoreError, UsageError
from ..pictures.post import build_all, stop_on_signals
from ..planning.config import DEFAULT_PREFIX
from ..planning.manifest import DEFAULT_MAX_JOBS
from ..planning.plan import Job, Plan
from ..running.summary import Failure, PlanReport, RunReport, summary_json
from ..storage import metadata
from ..storage.context import resolve
from ..storage.picks import load_picks, picks_path
from ..storage.store import (
    DONE,
    FAILED,
    IMAGES,
    RESULTS,
    SUMMARY,
    JobState,
    Record,
    job_states,
    open_locked,
    sha256_file,
    stamp,
    write_file,
)


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
        if isinstance(doc, dict) and isinstance(manifest := doc.get("manifest"), str):
            return manifest
    return None


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _target(dest: Path, job: Job) -> Path:
    """Where `job`'s image goes under `dest`; StoreError when that would leave its images/."""
    images = (dest / IMAGES).resolve()
    path = (dest / IMAGES / job.path).resolve()
    if not path.is_relative_to(images):
        raise StoreError(f"image path {job.path!r} leads outside {dest / IMAGES} (to {path}, "
                         "through a symbolic link): images are written only inside images/")
    return path


def _copy_verified(src: Path, target: Path, sha256: str) -> int | None:
    """Make `target` hold `src` when `src` still has `sha256`; then target's mtime, else None."""
    try:
        data = src.read_bytes()
    except OSError:
        return None
    # hash the bytes that are copied, not the file: it could change in between
    if hashlib.sha256(data).hexdigest() != sha256:
        return None  # changed since it was judged: not done
    if _sha256(target) != sha256:
        write_file(target, data)
        return stamp(target)
    return target.stat().st_mtime_ns


def _copy_sidecar(src: Path, target: Path) -> None:
    """The request beside an image kept byte for byte (provider-signed) goes with it."""
    try:
        data = metadata.sidecar(src).read_bytes()
    except OSError:
        return  # the request is inside the image, as for every image imagebatch signs
    write_file(metadata.sidecar(target), data)


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
    sources = ([dest] if has_own else []) + folders
    # each job's state in each source, in source order (done judged for any backend)
    judged: list[tuple[Path, list[JobState]]] = [
        (folder, job_states(plan.jobs, folder, None)) for folder in sources]
    requests = 0
    for folder in folders:
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            requests += int(json.loads((folder / SUMMARY).read_text()).get("requests", 0))
    lines: list[bytes] = []
    ok = failed = 0
    failures: list[Failure] = []
    backends: set[str] = set()
    for i, job in enumerate(plan.jobs):
        states = [(folder, found[i]) for folder, found in judged]
        target = _target(dest, job)
        # done in some source wins over a failure; among done ones the later source's, if
        # its image is still the one recorded. The path is the plan's, never the record's.
        chosen: Record | None = None
        for folder, st in reversed(states):
            if st.state == DONE and st.record is not None and st.record.sha256:
                mtime = _copy_verified(folder / IMAGES / job.path, target, st.record.sha256)
                if mtime is not None:
                    _copy_sidecar(folder / IMAGES / job.path, target)
                    chosen = replace(st.record, mtime_ns=mtime)
                    break
        if chosen is not None:
            ok += 1
        else:
            fails = [st.record for _, st in states if st.state == FAILED and st.record]
            if not fails:
                continue  # in no source, or changed since it was recorded: not done
            chosen = fails[-1]
            failed += 1
            failures.append(Failure(job.key, job.path, chosen.error))
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
    write_file(dest / SUMMARY, summary_json(summary, version()).encode())
    return summary


def merge_command(sources: Sequence[str], out: str, *, manifests: Sequence[str] = (),
                  max_jobs: int = DEFAULT_MAX_JOBS,
                  env_prefixes: Sequence[str] = (DEFAULT_PREFIX,),
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
    # every prefix, as `run` planned: a mixed pool's images are done under either key
    plans = {p.name: p for p in resolve(paths, env=env, env_prefixes=env_prefixes,
                                        max_jobs=max_jobs, judge=False).plans}
    for name in folders:
        if name not in plans:
            raise UsageError(f"no manifest given for {name!r} (names: {', '.join(plans)})")
    if post:  # a broken picks file stops the merge before anything is written
        for name in folders:
            load_picks(picks_path(plans[name].source), plans[name])
    merged = []
    # Ctrl-C or SIGTERM: the folder being merged is finished (its results.jsonl and summary
    # agree with its images), post-processing stops at once; Interrupted, exit 130.
    with stop_on_signals() as stop:
        for name, group in folders.items():
            stop.check()
            plan = plans[name]
            merged.append(merge_one(plan, group, dest_root / name))
            if post:
                # shown as merged: each image done for the backend that made it
                build_all(plan, dest_root / name, backend=None, stop=stop,
                          picks_file=picks_path(plan.source))
    return RunReport(tuple(merged), version=version())

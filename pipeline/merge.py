"""`imagebatch merge`: combine the outputs of shard runs into one folder, then post-process.

Each shard wrote `<shard out>/<name>/images/...` and `results.jsonl`. Merging copies every
image a shard recorded `ok` (checked against its recorded SHA-256), writes one
`results.jsonl` holding the latest record per key, a summary of the whole plan, and
rebuilds thumbnails, sheets and the index from the unsharded plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from pipeline.errors import UsageError
from pipeline.plan import Plan
from pipeline.store import IMAGES, RESULTS, SUMMARY, Record, atomic_write, read_records


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


def merge_one(plan: Plan, folders: list[Path], dest: Path) -> dict[str, Any]:
    """Merge one plan's shard folders into `dest` (= `<out>/<name>`); the merged summary."""
    latest: dict[str, tuple[Record, Path]] = {}
    requests = 0
    for folder in folders:
        for rec in read_records(folder / RESULTS):
            # an ok record wins over a failure; among equals the later shard's wins
            if rec.status == "ok" or latest.get(rec.key, (rec,))[0].status != "ok":
                latest[rec.key] = (rec, folder)
        try:
            requests += int(json.loads((folder / SUMMARY).read_text()).get("requests", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    by_key = {job.key: job for job in plan.jobs}
    lines: list[bytes] = []
    ok = failed = 0
    failures = []
    for key, (rec, folder) in sorted(latest.items(), key=lambda kv: (
            by_key[kv[0]].index if kv[0] in by_key else 1 << 62, kv[0])):
        job = by_key.get(key)
        if job is None:
            continue  # a job the manifest no longer has
        if rec.status == "ok":
            src = folder / IMAGES / rec.path
            if _sha256(src) != rec.sha256:
                continue  # missing or changed since it was recorded: not done
            target = dest / IMAGES / job.path
            if _sha256(target) != rec.sha256:
                atomic_write(target, src.read_bytes())
            rec = replace(rec, path=job.path)
            ok += 1
        else:
            failed += 1
            failures.append({"key": key, "path": job.path, "reason": rec.error})
        lines.append(rec.to_line())
    atomic_write(dest / RESULTS, b"".join(lines))
    backends = sorted({r.backend for r, _ in latest.values()})
    summary = {
        "name": plan.name, "manifest": plan.source, "backend": ",".join(backends) or None,
        "shard": None, "out": str(dest), "planned": len(plan.jobs), "succeeded": ok,
        "skipped": 0, "failed": failed, "pending": len(plan.jobs) - ok - failed,
        "requests": requests, "seconds": 0.0, "interrupted": False, "failures": failures,
        "merged_from": [str(f) for f in folders],
    }
    atomic_write(dest / SUMMARY, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
                 .encode())
    return summary


def merge_command(sources: Sequence[str], out: str, *, manifests: Sequence[str] = (),
                  max_jobs: int = 5000, env_prefix: str = "DIFFUSION", post: bool = True,
                  env: Mapping[str, str] | None = None, stdout: TextIO | None = None,
                  stderr: TextIO | None = None) -> int:
    """`imagebatch merge OUT... --out DIR`: exit 0 when every planned job is merged ok."""
    from pipeline.app import load_plans

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    env = os.environ if env is None else env
    dest_root = Path(out)
    src_paths = [Path(s) for s in sources]
    for src in src_paths:
        if src.resolve() == dest_root.resolve():
            raise UsageError(f"--out {out} is one of the folders being merged; choose another")
    folders = _shard_folders(src_paths)
    paths = list(manifests)
    if not paths:
        for name, group in folders.items():
            found = _manifest_of(group)
            if found is None or not Path(found).is_file():
                raise UsageError(f"cannot tell which manifest made {name!r}; pass --manifest")
            paths.append(found)
    plans = {p.name: p for p in load_plans(paths, env, env_prefix, max_jobs=max_jobs,
                                          shard=None)}
    code = 0
    for name, group in folders.items():
        plan = plans.get(name)
        if plan is None:
            raise UsageError(f"no manifest given for {name!r} (names: {', '.join(plans)})")
        summary = merge_one(plan, group, dest_root / name)
        if post:
            from pipeline.post import build_all

            build_all(plan, dest_root / name)
        print(f"{name}: merged {len(group)} folder(s): {summary['succeeded']} ok, "
              f"{summary['failed']} failed, {summary['pending']} missing of "
              f"{summary['planned']} -> {dest_root / name}", file=stdout)
        if summary["pending"]:
            print(f"note: {summary['pending']} job(s) of {name} are in no shard's outputs; "
                  "run the missing shard(s) and merge again", file=stderr)
        if summary["failed"] or summary["pending"]:
            code = 1
    return code

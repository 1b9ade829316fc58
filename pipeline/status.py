"""`status`, `show` and `sheet`: work from what a run left on disk; send nothing.

`status` counts done / failed / pending jobs against the backend `run` would use, `show`
prints the request embedded in an image, `sheet` rebuilds thumbnails, contact sheets and
index.html.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pipeline import config
from pipeline.errors import UsageError, printable
from pipeline.manifest import DEFAULT_MAX_JOBS, load_plans
from pipeline.metadata import MetadataError, read_request
from pipeline.options import DEFAULT_OUT
from pipeline.plan import canonical_json
from pipeline.post import build_all
from pipeline.store import Store


def status_command(
    manifest: str, *, out_dir: Path = DEFAULT_OUT, local: bool = False,
    env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,), verbose: int = 0,
    as_json: bool = False, shard: tuple[int, int] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS, env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """`imagebatch status`: done / failed / pending against the backend `run` would use
    (for a pool, done by any of its members)."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    prefixes, _repeats = config.split_prefixes(env_prefixes)
    names = config.status_backends(env, prefixes, local)
    backend = ",".join(sorted(set(names.values())))
    (plan,) = load_plans([manifest], env, prefixes[0], max_jobs=max_jobs, shard=shard)
    store = Store(out_dir, plan.name, backend, members=names if len(names) > 1 else None)
    store.load()
    counts = {"done": 0, "failed": 0, "pending": 0}
    rows: list[dict[str, str | None]] = []
    for job in plan.jobs:
        state, rec = store.state(job)
        counts[state] += 1
        rows.append({"key": job.key, "path": job.path, "state": state,
                     "error": rec.error if rec is not None and state == "failed" else None})
    if as_json:
        doc: dict[str, Any] = {"name": plan.name, "backend": backend, "planned": len(plan.jobs),
                               **counts}
        if verbose:
            doc["jobs"] = rows
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
        return 0
    print(f"{plan.name}: {len(plan.jobs)} jobs: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['pending']} pending (backend {backend}, {store.root})", file=out)
    if verbose:
        for row in rows:
            reason = f"  {printable(str(row['error']))}" if row["error"] else ""
            print(f"  {row['state']:<7} {str(row['key'])[:12]}  {printable(str(row['path']))}"
                  f"{reason}", file=out)
    return 0


def show_command(image: str, out: TextIO | None = None) -> int:
    """`imagebatch show`: the request embedded in an image, as the JSON body to send again."""
    out = out or sys.stdout
    if os.path.isdir(image):
        raise UsageError(f"{image}: a folder; give one image file")
    if not os.path.isfile(image):
        raise UsageError(f"{image}: no such file")
    try:
        body = read_request(Path(image))
    except (MetadataError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(canonical_json(body), file=out)
    return 0


def sheet_command(
    manifest: str, *, out_dir: Path = DEFAULT_OUT, env_prefix: str = config.DEFAULT_PREFIX,
    max_jobs: int = DEFAULT_MAX_JOBS, env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """`imagebatch sheet`: rebuild thumbnails, contact sheets and index.html from disk."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    (plan,) = load_plans([manifest], env, env_prefix, max_jobs=max_jobs, shard=None)
    root = Path(out_dir) / plan.name
    if not root.is_dir():
        raise UsageError(f"{root}: nothing to post-process yet; run `imagebatch run {manifest}`")
    result = build_all(plan, root)
    sheets = ", ".join(str(p) for p in result.sheets) or "none"
    print(f"{plan.name}: {result.thumbs_made} thumbnails made, {result.thumbs_kept} kept, "
          f"{result.missing} jobs without an image; sheets: {sheets}; index: {result.index}",
          file=out)
    return 0

"""`status`, `show` and `sheet`: work from what a run left on disk; send nothing.

`status` counts done / failed / pending jobs against the backend `run` would use, `show`
prints the request embedded in an image, `sheet` rebuilds thumbnails, contact sheets and
index.html.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..errors import ImagebatchError, UsageError, printable
from ..pictures.post import build_all, stop_on_signals
from ..planning import config
from ..planning.manifest import DEFAULT_MAX_JOBS
from ..planning.plan import Plan, canonical_json
from ..planning.select import ALL, Selection, narrow_all
from ..running.options import DEFAULT_OUT
from ..storage import picks
from ..storage.cache import restorable
from ..storage.context import CacheUse, resolve
from ..storage.credentials import provenance
from ..storage.metadata import MetadataError, read_request
from ..storage.store import DONE, job_states


def status_command(
    manifest: str, *, out_dir: Path = DEFAULT_OUT, local: bool = False,
    env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,), verbose: int = 0,
    as_json: bool = False, shard: tuple[int, int] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS, verify: bool = False,
    env: Mapping[str, str] | None = None, out: TextIO | None = None,
    picks_file: str | Path | None = None, selection: Selection = ALL,
    cache: str | None = None,
) -> int:
    """`imagebatch status`: done / failed / pending against the backend `run` would use
    (for a pool, done by any of its members), and the picks file's counts when there is
    one; of the jobs `selection` keeps, when given. With `cache` (a URL, or "" for
    $IMAGEBATCH_CACHE), how many jobs not done the shared cache can fill, from a listing."""
    out = out or sys.stdout
    ctx = resolve([manifest], env=env, env_prefixes=env_prefixes, local=local, out_dir=out_dir,
                  max_jobs=max_jobs, shard=None if selection.active else shard, cache=cache or None,
                  use_cache=CacheUse.OFF if cache is None else CacheUse.REQUIRED)
    backend, judged, shared = ctx.backend, ctx.judged, ctx.cache
    plan = _narrowed(ctx.plan, shard, selection)
    root = ctx.root(plan)
    picks_at = picks.picks_path(manifest, picks_file)
    pick_counts = None
    if picks_at.exists():
        # decisions belong to the whole plan, whatever shard is asked about
        whole = plan if shard is None and not selection.active else resolve(
            [manifest], env=ctx.env, env_prefixes=ctx.prefixes, local=local, out_dir=out_dir,
            max_jobs=max_jobs, judge=False).plan
        pick_counts = picks.counts(picks.load_picks(picks_at, whole), whole)
    counts = {"done": 0, "failed": 0, "pending": 0}
    rows: list[dict[str, str | None]] = []
    states = job_states(plan.jobs, root, judged, verify=verify)
    for st in states:
        counts[st.state] += 1
        rows.append({"key": st.job.key, "path": st.job.path, "state": st.state,
                     "error": st.reason})
    # failed for good (run sends them again only when asked) and kept at another size
    held: list[dict[str, str | None]] = [{"path": st.job.path, "reason": st.reason}
                                         for st in states if st.final]
    flagged: list[dict[str, str | None]] = [{"path": st.job.path, "flag": st.flag}
                                            for st in states if st.flag]
    fills = None
    if shared is not None:
        fills = len(restorable(shared, [st.job for st in states if st.state != DONE], judged))
    if as_json:
        doc: dict[str, Any] = {"name": plan.name, "backend": backend, "planned": len(plan.jobs),
                               **counts,
                               **({"selection": selection.as_dict()} if selection.active
                                  else {}),
                               "picks": pick_counts.as_dict() if pick_counts is not None else None,
                               "held": held, "flagged": flagged}
        if shared is not None:
            doc["cache"], doc["restorable"] = shared.url, fills
        if verbose:
            doc["jobs"] = rows
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
        return 0
    subset = f", a subset: {selection.describe()}" if selection.active else ""
    print(f"{plan.name}: {len(plan.jobs)} jobs: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['pending']} pending (backend {backend}, {root}{subset})", file=out)
    if shared is not None:
        print(f"cache {shared.url}: {fills} of the {len(plan.jobs) - counts['done']} jobs not "
              "done can be restored from it (run or pull; nothing paid)", file=out)
    if pick_counts is not None:
        print(f"picks: {pick_counts} ({picks_at})", file=out)
    if held:
        print(f"{len(held)} failed job(s) that run does not send again, the same request would "
              "get the same answer (change the request, or run --retry-failed):", file=out)
    for item in held:
        print(f"  {printable(str(item['path']))}: {printable(str(item['reason']))}", file=out)
    if flagged:
        print(f"{len(flagged)} image(s) made at another size than asked, kept:", file=out)
    for item in flagged:
        print(f"  {printable(str(item['path']))}: {printable(str(item['flag']))}", file=out)
    if verbose:
        for row in rows:
            reason = f"  {printable(str(row['error']))}" if row["error"] else ""
            print(f"  {row['state']:<7} {str(row['key'])[:12]}  {printable(str(row['path']))}"
                  f"{reason}", file=out)
    return 0


def _narrowed(plan: Plan, shard: tuple[int, int] | None, selection: Selection) -> Plan:
    """`plan` (loaded whole when there is a selection, else for `shard`) narrowed to
    `selection`, made on the whole plan, and `shard`."""
    if selection.active:
        (plan,) = narrow_all([plan], selection, shard)
    return plan


#: What a path that is not a regular file is, by its stat mode's type bits.
_FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _not_a_file(path: str) -> str | None:
    """Why `path` cannot be read as one image file, or None when it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path is not a folder)"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder; give one image file"
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind}); give one image file"


def show_command(image: str, out: TextIO | None = None, pretty: bool | None = None,
                 credentials: bool = False) -> int:
    """`imagebatch show`: the request embedded in an image, as the JSON body to send again:
    indented for a person on a terminal (or `pretty`), one compact line for a script; with
    `credentials`, the image's provenance (marker, Content Credentials, request) instead."""
    out = out or sys.stdout
    if pretty is None:
        pretty = out.isatty()
    kind = _not_a_file(image)
    if kind:
        raise UsageError(f"{image}: {kind}")
    if credentials:
        # The default output stays "the body to send again"; provenance is asked for apart.
        try:
            doc: Any = provenance(Path(image))
        except (MetadataError, OSError) as exc:
            raise UsageError(f"{image}: {exc}") from None
    else:
        try:
            doc = read_request(Path(image))
        except (MetadataError, OSError) as exc:
            raise UsageError(str(exc)) from None
    print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) if pretty
          else canonical_json(doc), file=out)
    if not credentials and isinstance(doc, dict):
        brief = brief_of(Path(image), str(doc.get("prompt", "")))
        if brief is not None:  # said apart: standard output stays the body to send again
            print(brief, file=sys.stderr)
    return 0


def brief_of(image: Path, prompt: str) -> str | None:
    """Where a prompt a chat model wrote came from, for an image of an outputs folder: "the
    brief of job J: ... (LOCK)", found through the folder's summary.json (its manifest) and
    that manifest's prompts lock; None when the image is not one of those."""
    from ..planning.promptlock import lock_name, parse_lock

    for folder in image.resolve().parents:
        summary = folder / "summary.json"
        if (folder / "images").is_dir() and summary.is_file():
            break
    else:
        return None
    try:
        manifest = str(json.loads(summary.read_text(encoding="utf-8"))["manifest"])
        lock = Path(manifest).parent / lock_name(manifest)
        entries = parse_lock(lock.read_bytes(), str(lock))
    except (OSError, ValueError, KeyError, TypeError, ImagebatchError):
        return None  # no manifest, no lock, or one that cannot be read: nothing to name
    for entry in entries.values():
        if prompt in entry.prompts:
            return (f"written by {entry.model} from the brief of job {entry.job_id}: "
                    f"{printable(entry.brief)!r} ({lock})")
    return None


def sheet_command(
    manifest: str, *, out_dir: Path = DEFAULT_OUT,
    env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,), max_jobs: int = DEFAULT_MAX_JOBS,
    local: bool = False, env: Mapping[str, str] | None = None, out: TextIO | None = None,
    picks_file: str | Path | None = None, selection: Selection = ALL,
) -> int:
    """`imagebatch sheet`: rebuild thumbnails, contact sheets and index.html from disk, showing
    as done what `status` (same options, same environment) counts done; with a selection,
    of its jobs only (a preview; the next full `sheet` or `run` shows them all again)."""
    out = out or sys.stdout
    ctx = resolve([manifest], env=env, env_prefixes=env_prefixes, local=local, out_dir=out_dir,
                  max_jobs=max_jobs)
    judged = ctx.judged
    plan = _narrowed(ctx.plan, None, selection)
    root = ctx.root(plan)
    if not root.is_dir():
        raise UsageError(f"{root}: nothing to post-process yet; run `imagebatch run {manifest}`")
    with stop_on_signals() as stop:  # Ctrl-C or SIGTERM: Interrupted, exit 130
        result = build_all(plan, root, backend=judged, stop=stop,
                           picks_file=picks.picks_path(manifest, picks_file))
        sheets = ", ".join(str(p) for p in result.sheets) or "none"
        print(f"{plan.name}: {result.thumbs_made} thumbnails made, {result.thumbs_kept} kept, "
              f"{result.missing} jobs without an image; sheets: {sheets}; index: {result.index}",
              file=out)
    return 0

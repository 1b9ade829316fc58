"""`validate`, `plan`, `schema` and `pick`: read manifests (and the picks file), send nothing."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from pipeline import config, picks
from pipeline.errors import ManifestError, UsageError, printable
from pipeline.picks import PICK, REJECT, PickEntry
from pipeline.plan import Plan
from pipeline.store import IMAGES

MAX_SHOWN = 200  # problems printed; the count line still says how many there are


def _plans(manifests: Sequence[str], env: Mapping[str, str] | None, prefix: str, *,
           max_jobs: int, shard: tuple[int, int] | None = None) -> list[Plan]:
    from pipeline.app import load_plans

    env = os.environ if env is None else env
    config.check_prefix(prefix)
    return load_plans(manifests, env, prefix, max_jobs=max_jobs, shard=shard)


def validate_command(manifests: Sequence[str], *, max_jobs: int, env_prefix: str = "DIFFUSION",
                     env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Check every manifest as `run` would; print one line per good file; errors raise."""
    out = out or sys.stdout
    for plan in _plans(manifests, env, env_prefix, max_jobs=max_jobs):
        print(f"{plan.source}: ok, {plan.total} jobs ({plan.name}, model {plan.model})", file=out)
    return 0


def plan_json(plan: Plan) -> str:
    """The plan as `plan --json` prints it: a JSON array, one job per line, stable bytes."""
    rows = []
    for job in plan.jobs:
        head = json.dumps({"key": job.key, "path": job.path}, ensure_ascii=False)[:-1]
        variables = json.dumps(dict(job.vars), ensure_ascii=False)
        rows.append(f'{head}, "request": {job.body}, "vars": {variables}}}')
    return "[\n" + ",\n".join(rows) + "\n]\n" if rows else "[]\n"


def plan_table(plan: Plan, width: int = 100) -> str:
    """The plan as a table a person reads: index, key, seed, path, prompt."""
    lines = [f"{'#':>5}  {'key':12}  {'seed':>10}  {'path':30}  prompt"]
    for job in plan.jobs:
        prompt = printable(str(job.request.get("prompt", "")).replace("\n", " "))
        line = (f"{job.index:>5}  {job.key[:12]}  {job.seed:>10}  {printable(job.path):30}  "
                f"{prompt}")
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    if plan.shard:
        k, n = plan.shard
        lines.append(f"{len(plan.jobs)} of {plan.total} jobs in shard {k}/{n} "
                     f"({plan.name}, model {plan.model})")
    else:
        lines.append(f"{plan.total} jobs ({plan.name}, model {plan.model})")
    return "\n".join(lines) + "\n"


def _write(text: str, out: TextIO) -> None:
    # UTF-8 whatever the locale, so `plan --json` is the same bytes on every machine
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(text.encode("utf-8"))
        buffer.flush()
    else:
        out.write(text)


def plan_command(manifest: str, *, as_json: bool, shard: tuple[int, int] | None, max_jobs: int,
                 env_prefix: str = "DIFFUSION", env: Mapping[str, str] | None = None,
                 out: TextIO | None = None) -> int:
    """`imagebatch plan`: the job list (table or JSON); sends nothing, writes nothing."""
    out = out or sys.stdout
    (plan,) = _plans([manifest], env, env_prefix, max_jobs=max_jobs, shard=shard)
    if as_json:
        _write(plan_json(plan), out)
    else:
        _write(plan_table(plan, shutil.get_terminal_size((100, 20)).columns), out)
    return 0


def schema_command(out: TextIO | None = None) -> int:
    """`imagebatch schema`: the manifest's JSON Schema, for editors."""
    from pipeline.schema import schema_text

    _write(schema_text(), out or sys.stdout)
    return 0


def problem_report(exc: ManifestError) -> str:
    """Every problem on its own line, then a count per file."""
    files: dict[str, int] = {}
    for p in exc.problems:
        files[p.file] = files.get(p.file, 0) + 1
    counts = [f"{n} problem{'s' if n > 1 else ''} in {f}" for f, n in files.items()]
    if exc.unreadable:
        counts.append(f"{len(exc.unreadable)} file{'s' if len(exc.unreadable) > 1 else ''} "
                      "not read")
    tail = "; ".join(counts)
    shown = [*exc.unreadable, *(str(p) for p in exc.problems[:MAX_SHOWN])]
    if len(exc.problems) > MAX_SHOWN:
        shown.append(f"... and {len(exc.problems) - MAX_SHOWN} more")
    return "\n".join(shown) + f"\n{tail}; nothing was sent"


def _describe(entry: PickEntry | None, stale: bool) -> str:
    """How `pick` shows an entry: 'picked, rated 4', 'rejected', 'rated 2', 'nothing'."""
    if entry is None:
        return "nothing"
    words = {PICK: "picked", REJECT: "rejected"}
    parts = [words[entry.status]] if entry.status else []
    if entry.rating is not None:
        parts.append(f"rated {entry.rating}")
    text = ", ".join(parts) or "nothing"
    return f"stale ({text} on an earlier picture)" if stale else text


def image_path_of(plan: Plan, given: str, out_dir: Path) -> str | None:
    """The plan's image path that `given` names: itself as `plan` prints it (relative to
    images/), or the image file's own path under `out_dir`/<name>/images; else None."""
    keys = picks.plan_keys(plan)
    if given in keys:
        return given
    images = (Path(out_dir) / plan.name / IMAGES).resolve()
    try:
        rel = Path(given).resolve().relative_to(images).as_posix()
    except (ValueError, OSError, RuntimeError):
        return None
    return rel if rel in keys else None


def pick_command(manifest: str, paths: Sequence[str], *, action: str = PICK,
                 rating: int | None = None, picks_file: str | Path | None = None,
                 out_dir: Path = Path("outputs"), max_jobs: int,
                 env_prefix: str = "DIFFUSION", env: Mapping[str, str] | None = None,
                 out: TextIO | None = None) -> int:
    """`imagebatch pick`: pick (default), reject, rate or clear images in the picks file.

    `action` is 'pick', 'reject', 'rate' (sets `rating`, keeps the status) or 'clear'.
    Every path is checked first: one unknown path changes nothing.
    """
    out = out or sys.stdout
    (plan,) = _plans([manifest], env, env_prefix, max_jobs=max_jobs)
    file = picks.picks_path(manifest, picks_file)
    chosen: dict[str, str] = {}
    unknown = []
    for given in paths:
        found = image_path_of(plan, given, out_dir)
        if found is None:
            unknown.append(given)
        else:
            chosen.setdefault(found, given)
    if unknown:
        keys = list(picks.plan_keys(plan))
        lines = []
        for given in unknown:
            close = difflib.get_close_matches(given, keys, n=1, cutoff=0.8)
            hint = f" (did you mean {printable(close[0])!r}?)" if close else ""
            lines.append(f"{printable(given)!r} is not an image of {manifest}{hint}")
        raise UsageError("\n".join(lines) + f"\n`imagebatch plan {manifest}` lists its images "
                                            f"(paths relative to {out_dir}/{plan.name}/"
                                            f"{IMAGES}); {file} was not changed")
    change: picks.Change
    if action == "clear":
        change = None
    elif action == "rate":
        change = (picks.KEEP, rating)
    else:
        change = (action, picks.KEEP)
    before, after = picks.change_picks(file, plan, {p: change for p in chosen})
    for path in chosen:
        was = _describe(before.entries.get(path), before.is_stale(path, plan))
        now = _describe(after.entries.get(path), after.is_stale(path, plan))
        shown = printable(path)
        print(f"{shown}: {was} -> {now}" if was != now else f"{shown}: {now} (unchanged)",
              file=out)
    print(f"{file}: {picks.counts(after, plan)}", file=out)
    return 0

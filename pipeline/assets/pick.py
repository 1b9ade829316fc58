"""`pick`: pick, reject, rate or clear images in a manifest's picks file; sends nothing."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from ..errors import UsageError, printable
from ..planning.config import DEFAULT_PREFIX
from ..planning.plan import Plan
from ..storage import picks
from ..storage.context import resolve
from ..storage.picks import PICK, REJECT, PickEntry
from ..storage.store import IMAGES


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
                 env_prefixes: Sequence[str] = (DEFAULT_PREFIX,),
                 env: Mapping[str, str] | None = None,
                 out: TextIO | None = None) -> int:
    """`imagebatch pick`: pick (default), reject, rate or clear images in the picks file.

    `action` is 'pick', 'reject', 'rate' (sets `rating`, keeps the status) or 'clear'.
    Every path is checked first: one unknown path changes nothing.
    """
    out = out or sys.stdout
    # every prefix, as `run` plans: a mixed pool's picks are tied to the same keys
    plan = resolve([manifest], env=env, env_prefixes=env_prefixes, max_jobs=max_jobs,
                   judge=False).plan
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

"""`validate`, `plan` and `schema`: read manifests, print what a run would do, send nothing.

`plan` ends with the counts a run would act on (planning/counts.py): jobs, already done
(the store's one definition of done, judged against the backend(s) `run` would use),
restorable from a cache, to send, and their estimated cost at the price.

Loading imports no HTTP code: these commands start fast and need no network library.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, TextIO

from ..errors import ManifestError, printable
from ..planning.config import DEFAULT_PREFIX
from ..planning.costs import price_from
from ..planning.counts import PlanCounts, count_plan
from ..planning.manifest import DEFAULT_MAX_JOBS
from ..planning.plan import Job, Plan
from ..planning.select import ALL, Selection, narrow_all
from ..storage.context import CacheUse, Context, resolve
from ..storage.store import DONE, job_states

DEFAULT_OUT = Path("outputs")  # as `run --out` (running.options, not imported: no HTTP code)

MAX_SHOWN = 200  # problems printed; the count line still says how many there are


def validate_command(manifests: Sequence[str], *, max_jobs: int = DEFAULT_MAX_JOBS,
                     env_prefixes: Sequence[str] = (DEFAULT_PREFIX,),
                     env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Check every manifest as `run` would; print one line per good file; errors raise."""
    out = out or sys.stdout
    ctx = resolve(manifests, env=env, env_prefixes=env_prefixes, max_jobs=max_jobs, judge=False)
    for plan in ctx.plans:
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


def fit_prompt(prompt: str, values: Sequence[str], width: int) -> str:
    """`prompt` in at most `width` characters, keeping its matrix values in sight: the fixed
    text around them is shortened first (the longest first), so the part that tells two
    variants apart is what stays; then the end is cut."""
    if len(prompt) <= width:
        return prompt
    spans = sorted((prompt.find(v), prompt.find(v) + len(v)) for v in values
                   if v and prompt.find(v) >= 0)
    parts: list[list[Any]] = []  # [text, is a value], in the prompt's order
    at = 0
    for start, end in spans:
        if start >= at:  # a value inside another is already in sight
            parts += [[prompt[at:start], False], [prompt[start:end], True]]
            at = end
    parts.append([prompt[at:], False])
    fixed = sorted((i for i, (text, is_value) in enumerate(parts) if not is_value and text),
                   key=lambda i: -len(parts[i][0]))
    for i in fixed:
        excess = sum(len(t) for t, _ in parts) - width
        if excess <= 0:
            break
        text = parts[i][0]
        short = text[:max(len(text) - excess - 1, 3 if i == 0 else 0)] + "…"
        if len(short) < len(text):
            parts[i][0] = short
    shown = "".join(t for t, _ in parts)
    return shown if len(shown) <= width else shown[: max(width - 1, 0)] + "…"


def plan_table(plan: Plan, width: int = 100) -> str:
    """The plan as a table a person reads: index, key, seed, path, prompt (its matrix
    values kept in sight when it must be shortened to fit `width`)."""
    lines = [f"{'#':>5}  {'key':12}  {'seed':>10}  {'path':30}  prompt"]
    for job in plan.jobs:
        prompt = printable(str(job.request.get("prompt", "")).replace("\n", " "))
        head = f"{job.index:>5}  {job.key[:12]}  {job.seed:>10}  {printable(job.path):30}  "
        room = max(width - len(head), 12)
        line = head + fit_prompt(prompt, [printable(v) for _, v in job.vars], room)
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    if plan.shard:
        k, n = plan.shard
        lines.append(f"{len(plan.jobs)} of {plan.total} jobs in shard {k}/{n} "
                     f"({plan.name}, model {plan.model})")
    else:
        lines.append(f"{plan.total} jobs ({plan.name}, model {plan.model})")
    return "\n".join(lines) + "\n"


def write_utf8(text: str, out: TextIO) -> None:
    """Write `text` to `out` as UTF-8 whatever the locale: `plan --json` is the same bytes
    on every machine, and the Markdown of `diff` goes into files CI reads as UTF-8."""
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(text.encode("utf-8"))
        buffer.flush()
    else:
        out.write(text)


def restorable_keys(jobs: Sequence[Job], ctx: Context) -> AbstractSet[str] | None:
    """The keys of `jobs` the context's shared cache holds an image of made by one of its
    judged backends, from a listing (nothing downloaded); None when no cache is set."""
    from ..storage.cache import restorable

    return None if ctx.cache is None else restorable(ctx.cache, jobs, ctx.judged)


def plan_counts(plan: Plan, ctx: Context, price: str | None) -> PlanCounts:
    """What a run of `plan` would act on, judged as `status` and `run` judge (the context's
    backends, outputs folder and shared cache)."""
    cost = price_from(price, ctx.env)
    states = job_states(plan.jobs, ctx.root(plan), ctx.judged)
    done = {st.job.key for st in states if st.state == DONE}
    held = {st.job.key for st in states if st.final}  # as `run` holds them back
    return count_plan(plan.jobs, done, restorable_keys(plan.jobs, ctx), cost, held)


def plan_command(manifest: str, *, as_json: bool = False, shard: tuple[int, int] | None = None,
                 max_jobs: int = DEFAULT_MAX_JOBS, env_prefix: str | None = None,
                 env_prefixes: Sequence[str] = (DEFAULT_PREFIX,),
                 env: Mapping[str, str] | None = None, out: TextIO | None = None,
                 counts_json: bool = False, selection: Selection = ALL,
                 price: str | None = None, out_dir: Path = DEFAULT_OUT,
                 local: bool = False, cache: str | None = None) -> int:
    """`imagebatch plan`: the job list (table or JSON), the table ending with what a run
    would send and cost (or only those counts, as JSON); sends nothing, writes nothing."""
    out = out or sys.stdout
    env = os.environ if env is None else env
    prefixes = (env_prefix,) if env_prefix is not None else tuple(env_prefixes)
    if not as_json:
        price_from(price, env)  # a price that is not one: exit 2 before any output
    whole = selection.active
    # --json is the plan alone: no URL, key, outputs folder or cache is read for it
    ctx = resolve([manifest], env=env, env_prefixes=prefixes, local=local, out_dir=out_dir,
                  max_jobs=max_jobs, shard=None if whole else shard, cache=cache,
                  use_cache=CacheUse.OFF if as_json else CacheUse.ON, judge=not as_json)
    plan = ctx.plan
    if whole:
        (plan,) = narrow_all([plan], selection, shard)
    if as_json:  # the contract: this array and nothing else, whatever is on disk
        write_utf8(plan_json(plan), out)
        return 0
    counts, backend = plan_counts(plan, ctx, price), ctx.backend
    if counts_json:
        doc: dict[str, Any] = {
            "name": plan.name, "manifest": plan.source, "backend": backend,
            "out": str(Path(out_dir) / plan.name),
            "shard": f"{plan.shard[0]}/{plan.shard[1]}" if plan.shard else None,
            "selection": selection.as_dict() if selection.active else None,
            **counts.as_dict()}
        write_utf8(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", out)
        return 0
    table = plan_table(plan, shutil.get_terminal_size((100, 20)).columns)
    if selection.active:
        table += f"a subset ({selection.describe()}): {len(plan.jobs)} jobs\n"
    write_utf8(table + "\n".join(counts.lines()) + "\n", out)
    return 0


def schema_command(out: TextIO | None = None) -> int:
    """`imagebatch schema`: the manifest's JSON Schema, for editors."""
    from ..planning.schema import schema_text

    write_utf8(schema_text(), out or sys.stdout)
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

"""PURE: a plan diff report as the text a person reads, as JSON, and as Markdown for a pull
request (a table per manifest, changed prompts old and new, the picks that go stale).

Every value from a manifest (prompts, paths, ids) is shown in Markdown inside code spans or
fenced blocks, so nothing in it can become a link, a mention, HTML or a table break.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import printable
from ..planning.costs import Price, cost_text, cost_value
from ..planning.plan import Job
from ..planning.plandiff import ChangeGroup, FieldChange, PlanDiff, change_groups, job_doc

MAX_ROWS = 40  # table rows per manifest in Markdown; the counts still say how many there are
MAX_PROMPT_GROUPS = 12  # changed prompts shown old and new per manifest in Markdown
MAX_STALE_SHOWN = 50  # stale picks named per manifest in Markdown
MAX_SHOWN_CHARS = 1500  # of one prompt (or other value) in Markdown
#: A pull-request comment holds at most 65,536 characters: longer Markdown keeps only the
#: summary table and says so.
MAX_MARKDOWN_CHARS = 60_000
#: How `to_send` was counted: jobs not done in the outputs folder, or (no folder here, as in
#: CI) the jobs this change adds, changes or moves.
FROM_OUTPUTS, FROM_CHANGE = "outputs", "change"


@dataclass(frozen=True, slots=True)
class ManifestDiff:
    """One manifest's diff with what a run would send, ready to render."""

    manifest: str  # as given
    name: str  # the plan's name (the old one's when the manifest is gone)
    old_source: str  # where the old plan was read: "main:manifests/x.yaml", or a file
    old_state: str  # ok | missing | invalid
    new_state: str  # ok | missing
    diff: PlanDiff
    to_send: int
    to_send_from: str  # FROM_OUTPUTS | FROM_CHANGE
    outputs: str  # the outputs folder judged (or that was not there)
    picks_file: str | None = None  # the picks file read for stale decisions, when one
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # of the old manifest, each "FILE:LINE:COL: ..."


@dataclass(frozen=True, slots=True)
class DiffReport:
    """Every manifest's diff, against one revision or file, at one price (None: unknown)."""

    against: str  # as a person reads it: "origin/main (merge base 1a2b3c4d5e6f)"
    against_doc: dict[str, Any]
    price: Price | None
    manifests: tuple[ManifestDiff, ...] = field(default=())

    @property
    def to_send(self) -> int:
        """Requests over every manifest."""
        return sum(m.to_send for m in self.manifests)


# ---- JSON ---------------------------------------------------------------------------------

def _field_doc(f: FieldChange) -> dict[str, Any]:
    return {"field": f.field, "old": f.old, "new": f.new}


def json_text(report: DiffReport) -> str:
    """The report as JSON: an object with `against`, `price`, `manifests` and `totals`."""
    price = report.price
    docs = []
    for m in report.manifests:
        d = m.diff
        docs.append({
            "manifest": m.manifest, "name": m.name,
            "old": {"source": m.old_source, "state": m.old_state, "jobs": d.old_total,
                    "problems": list(m.problems)},
            "new": {"state": m.new_state, "jobs": d.new_total},
            "counts": {"added": len(d.added), "removed": len(d.removed),
                       "changed": len(d.changed), "moved": len(d.moved),
                       "unchanged": d.unchanged, "stale_picks": len(d.stale_picks)},
            "to_send": m.to_send, "to_send_from": m.to_send_from, "outputs": m.outputs,
            "cost": cost_value(price, m.to_send),
            "added": [job_doc(j) for j in d.added],
            "removed": [job_doc(j) for j in d.removed],
            "changed": [{"path": c.path, "old_key": c.old.key, "new_key": c.new.key,
                         "fields": [_field_doc(f) for f in c.fields]} for c in d.changed],
            "moved": [{"old_path": mv.old.path, "path": mv.new.path, "key": mv.new.key}
                      for mv in d.moved],
            "stale_picks": [{"path": s.path, "status": s.status, "rating": s.rating,
                             "why": s.why, "moved_to": s.moved_to} for s in d.stale_picks],
            "picks_file": m.picks_file, "notes": list(m.notes),
        })
    doc = {
        "against": report.against_doc,
        "price": None if price is None else {"amount": cost_value(price, 1),
                                             "text": price.format(price.amount)},
        "manifests": docs,
        "totals": {"to_send": report.to_send, "cost": cost_value(price, report.to_send)},
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# ---- text ---------------------------------------------------------------------------------

def _counts(m: ManifestDiff) -> str:
    d = m.diff
    old = "none" if d.old_total is None else str(d.old_total)
    return (f"{old} -> {d.new_total} jobs: {len(d.added)} added, {len(d.removed)} removed, "
            f"{len(d.changed)} changed, {len(d.moved)} moved, {d.unchanged} unchanged")


def _sending(m: ManifestDiff, price: Price | None) -> str:
    n = m.to_send
    what = f"{n} request{'' if n == 1 else 's'}"
    cost = cost_text(price, n)
    at = f" at {price.format(price.amount)} an image" if price is not None else ""
    basis = (f"the jobs not done in {m.outputs}" if m.to_send_from == FROM_OUTPUTS else
             f"no {m.outputs} here: the jobs this change adds, changes or moves")
    return f"a run would send {what}, cost {cost}{at} ({basis})"


def _old_line(m: ManifestDiff) -> str | None:
    if m.old_state == "missing":
        return f"{m.old_source} does not exist: every job is added"
    if m.old_state == "invalid":
        return f"{m.old_source} cannot be read as a manifest: every job is shown as added"
    if m.new_state == "missing":
        return f"{m.manifest} does not exist now: every job is removed"
    return None


def text(report: DiffReport) -> str:
    """The report for a terminal: counts, then one line per job that differs."""
    lines = [f"imagebatch diff against {printable(report.against)}"]
    for m in report.manifests:
        d = m.diff
        lines.append(f"{printable(m.manifest)} ({m.name}): {_counts(m)}")
        lines.append(f"  {_sending(m, report.price)}")
        if (old := _old_line(m)) is not None:
            lines.append(f"  {printable(old)}")
        lines += [f"  {p}" for p in map(printable, m.problems)]
        lines += [f"  added    {printable(j.path)}" for j in d.added]
        lines += [f"  removed  {printable(j.path)}" for j in d.removed]
        for group in change_groups(d.changed):
            for c in group.jobs:
                names = ", ".join(f.field for f in c.fields)
                lines.append(f"  changed  {printable(c.path)}  ({names})")
            for f in group.fields:
                lines.append(f"    {f.field}: - {_value(f.old)}")
                lines.append(f"    {' ' * len(f.field)}  + {_value(f.new)}")
        lines += [f"  moved    {printable(mv.old.path)} -> {printable(mv.new.path)}"
                  for mv in d.moved]
        if d.stale_picks:
            where = printable(m.picks_file or "")
            n = len(d.stale_picks)
            lines.append(f"  {n} pick{' goes' if n == 1 else 's go'} stale ({where}):")
            for s in d.stale_picks:
                to = f" to {printable(s.moved_to)}" if s.moved_to else ""
                lines.append(f"    {printable(s.path)} ({s.what}; its job {s.why}{to})")
        lines += [f"  note: {printable(n)}" for n in m.notes]
        if d.is_empty and m.old_state == "ok" and m.new_state == "ok":
            lines.append("  no job changes")
    if len(report.manifests) > 1:
        lines.append(f"in all: a run would send {report.to_send} request"
                     f"{'' if report.to_send == 1 else 's'}, cost "
                     f"{cost_text(report.price, report.to_send)}")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if value is None:
        return "(not set)"
    return printable(value.replace("\n", " ") if isinstance(value, str) else json.dumps(value))


# ---- Markdown -----------------------------------------------------------------------------

_BACKTICKS = re.compile(r"`+")


def _code(value: str, *, table: bool = True, limit: int = MAX_SHOWN_CHARS) -> str:
    """`value` as one inline code span: no Markdown, HTML or mention inside takes effect."""
    value = " ".join(value.replace("\r", " ").split("\n"))
    if len(value) > limit:
        value = value[:limit] + "…"
    if not value:
        return "*(empty)*"
    ticks = "`" * (max((len(m) for m in _BACKTICKS.findall(value)), default=0) + 1)
    if value[0] in "` " or value[-1] in "` ":
        value = f" {value} "
    if table:
        value = value.replace("|", "\\|")  # GitHub splits cells before it reads code spans
    return f"{ticks}{value}{ticks}"


def _md_value(value: Any) -> str:
    if value is None:
        return "*(not set)*"
    return _code(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _md_count_row(m: ManifestDiff, price: Price | None) -> str:
    d = m.diff
    old = "–" if d.old_total is None else str(d.old_total)
    new = "–" if m.new_state == "missing" else str(d.new_total)
    return (f"| {_code(m.manifest)} | {old} → {new} | {len(d.added)} | {len(d.removed)} | "
            f"{len(d.changed)} | {len(d.moved)} | {d.unchanged} | {m.to_send} | "
            f"{_md_cost(price, m.to_send)} | {len(d.stale_picks)} |")


def _md_cost(price: Price | None, n: int) -> str:
    return "unknown" if price is None else cost_text(price, n)


def _rows(m: ManifestDiff) -> list[tuple[str, str, list[Job], str]]:
    """(change, job id, jobs, details) rows: the jobs of one manifest entry with one kind of
    change (for a changed job: the same fields changed), so a sweep is a row, not a row per
    variant; the exact old and new values are in the blocks below the table."""
    d = m.diff
    rows: dict[tuple[str, str, str], list[Job]] = {}
    details: dict[tuple[str, str, str], str] = {}

    def add(kind: str, job: Job, detail: str, sig: str = "") -> None:
        k = (kind, job.id, sig)
        rows.setdefault(k, []).append(job)
        details.setdefault(k, detail)

    for j in d.added:
        add("added", j, _code(j.path))
    for j in d.removed:
        add("removed", j, _code(j.path))
    for c in d.changed:
        names = ", ".join(f.field for f in c.fields)
        # the fields that changed, then the first image they change (not "prompt: path",
        # which reads as if the prompt were the path)
        add("changed", c.new, f"{names or 'request'} changed, e.g. {_code(c.path)}", names)
    for mv in d.moved:
        add("moved", mv.new, f"{_code(mv.old.path)} → {_code(mv.new.path)}")
    return [(kind, job_id, jobs, details[(kind, job_id, sig)])
            for (kind, job_id, sig), jobs in rows.items()]


def _seeds(jobs: list[Job]) -> str:
    seeds = list(dict.fromkeys(str(j.seed) for j in jobs))  # each once, in plan order
    return ", ".join(seeds) if len(seeds) <= 8 else ", ".join(seeds[:8]) + f", … ({len(seeds)})"


def _md_section(m: ManifestDiff, price: Price | None) -> list[str]:
    d = m.diff
    lines = ["", f"### {_code(m.manifest, table=False)} ({_code(m.name, table=False)})", ""]
    basis = (f"the jobs not done in {_code(m.outputs, table=False)}"
             if m.to_send_from == FROM_OUTPUTS else "the jobs this change adds, changes or moves")
    lines.append(f"{_counts(m).replace('->', '→')}. A run would send **{m.to_send}** request"
                 f"{'' if m.to_send == 1 else 's'} ({basis}); cost: "
                 f"{_md_cost(price, m.to_send)}.")
    if (old := _md_old_line(m)) is not None:
        lines += ["", f"> {old}"]
    if m.problems:
        lines += _md_block(m.problems)
    rows = _rows(m)
    if rows:
        lines += ["", "| change | job | seeds | images | for example |",
                  "| --- | --- | --- | ---: | --- |"]
        for kind, job_id, jobs, detail in rows[:MAX_ROWS]:
            more = f" (+{len(jobs) - 1} more)" if len(jobs) > 1 else ""
            lines.append(f"| {kind} | {_code(job_id)} | {_seeds(jobs)} | {len(jobs)} | "
                         f"{detail}{more} |")
        if len(rows) > MAX_ROWS:
            lines.append(f"| … | {len(rows) - MAX_ROWS} more rows | | | `imagebatch diff` "
                         "lists every job |")
        legend = [text for kinds, text in (
            (d.changed, "*changed*: the same image path with another request, made again"),
            (d.moved, "*moved*: the same request at a new image path (its job was renamed "
                      "or its path template changed); the image is made again there, and a "
                      "pick of the old path goes stale")) if kinds]
        if legend:
            lines += ["", "; ".join(legend) + "."]
    groups = [g for g in change_groups(d.changed) if g.fields]
    if groups:
        lines += ["", "<details open><summary>Changed requests, old and new</summary>"]
        for g in groups[:MAX_PROMPT_GROUPS]:
            lines += _md_group(g)
        if len(groups) > MAX_PROMPT_GROUPS:
            lines += ["", f"… and {len(groups) - MAX_PROMPT_GROUPS} more changes"]
        lines += ["", "</details>"]
    if d.stale_picks:
        where = f" in {_code(m.picks_file, table=False)}" if m.picks_file else ""
        n = len(d.stale_picks)
        lines += ["", f"**{n} pick{' goes' if n == 1 else 's go'} stale**{where}:", ""]
        for s in d.stale_picks[:MAX_STALE_SHOWN]:
            to = f" to {_code(s.moved_to, table=False)}" if s.moved_to else ""
            lines.append(f"- {_code(s.path, table=False)}: {s.what}; its job {s.why}{to}")
        if len(d.stale_picks) > MAX_STALE_SHOWN:
            lines.append(f"- … and {len(d.stale_picks) - MAX_STALE_SHOWN} more")
    if m.notes:
        lines += _md_block(tuple(f"note: {n}" for n in m.notes))
    if d.is_empty and m.old_state == "ok" and m.new_state == "ok":
        lines += ["", "No job changes."]
    return lines


def _md_old_line(m: ManifestDiff) -> str | None:
    if m.old_state == "missing":
        return f"{_code(m.old_source, table=False)} does not exist: every job is added."
    if m.old_state == "invalid":
        return (f"{_code(m.old_source, table=False)} cannot be read as a manifest (below): "
                "every job is shown as added.")
    if m.new_state == "missing":
        return f"{_code(m.manifest, table=False)} does not exist now: every job is removed."
    return None


def _md_block(lines: tuple[str, ...]) -> list[str]:
    """Lines of ours that quote file names and messages, as a fenced text block."""
    body = [printable(line) for line in lines]
    fence = "`" * max(3, max((len(x) for x in _BACKTICKS.findall("\n".join(body))),
                             default=0) + 1)
    return ["", f"{fence}text", *body, fence]


def _md_group(g: ChangeGroup) -> list[str]:
    n = len(g.jobs)
    first = g.jobs[0].path
    lines = ["", f"{_code(first, table=False)}" + (f" and {n - 1} more" if n > 1 else "")
             + f" ({n} image{'' if n == 1 else 's'}):", ""]
    body: list[str] = []
    for f in g.fields:
        for sign, value in (("-", f.old), ("+", f.new)):
            shown = "(not set)" if value is None else (
                value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            if len(shown) > MAX_SHOWN_CHARS:
                shown = shown[:MAX_SHOWN_CHARS] + "…"
            label = f"{f.field}: " if f.field != "prompt" or len(g.fields) > 1 else ""
            for i, line in enumerate(shown.replace("\r", "").split("\n")):
                body.append(f"{sign} {label if i == 0 else ''}{line}")
    fence = "`" * max(3, max((len(x) for x in _BACKTICKS.findall("\n".join(body))),
                             default=0) + 1)
    return [*lines, f"{fence}diff", *body, fence]


def markdown(report: DiffReport) -> str:
    """The report for a pull request or a CI step summary: a table of counts, then a section
    per manifest with its changes, changed requests old and new, and stale picks."""
    price = report.price
    at = (f"Price per image: {price.format(price.amount)} (an estimate)." if price is not None
          else "No price set (`--price` or `IMAGEBATCH_PRICE`): costs are unknown.")
    head = ["## imagebatch plan diff", "",
            f"Compared with {_code(report.against, table=False)}. {at}", "",
            "| manifest | jobs | added | removed | changed | moved | unchanged | to send | "
            "cost | stale picks |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    head += [_md_count_row(m, price) for m in report.manifests]
    if len(report.manifests) > 1:
        head.append(f"| **all** | | | | | | | **{report.to_send}** | "
                    f"**{_md_cost(price, report.to_send)}** | |")
    if not report.manifests:
        head += ["", "No manifest to compare."]
    body: list[str] = []
    for m in report.manifests:
        body += _md_section(m, price)
    full = "\n".join(head + body) + "\n"
    if len(full) <= MAX_MARKDOWN_CHARS:
        return full
    return "\n".join(head + ["", f"The details are longer than {MAX_MARKDOWN_CHARS:,} "
                                 "characters and are left out; `imagebatch diff` (or "
                                 "`--json`) lists every job."]) + "\n"

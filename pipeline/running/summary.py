"""PURE: what a run (or a merge) came to, as a typed report, and its renderings.

`RunReport` holds one `PlanReport` per manifest. It is rendered as the JSON of
summary.json and `run --json`, as the text a person reads after a run, and as the Markdown
of a CI step summary. Nothing here touches the disk.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import ServiceConfigError, StoreError, printable
from ..planning.budget import Budget
from ..planning.config import LOCAL_BACKEND
from ..planning.costs import Price, cost_text, cost_value
from ..planning.select import Selection

MAX_FAILURES_MD = 50  # failures listed per manifest in Markdown; the count says how many


@dataclass(frozen=True, slots=True)
class Failure:
    """One job that failed: its key, its image path, why."""

    key: str
    path: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class PlanReport:
    """What one manifest's run (or merge) came to: the counts summary.json holds."""

    name: str
    manifest: str
    backend: str | None
    shard: str | None  # "K/N", or None for the whole plan
    out: str  # the outputs folder of this plan
    planned: int
    succeeded: int
    skipped: int
    failed: int
    pending: int
    requests: int  # HTTP requests sent, retries and image downloads included
    seconds: float
    interrupted: bool
    failures: tuple[Failure, ...] = ()
    merged_from: tuple[str, ...] | None = None  # the folders a merge read, else None
    # What post-processing left in `out`, named for the step summary (not in the JSON).
    sheets: tuple[str, ...] = ()
    index: str | None = None
    sent: int = 0  # image requests (POSTs) sent: what a budget and the price count
    selected_of: int | None = None  # with --only / --first-seeds: the jobs of the whole plan
    # The shared cache, when one was used (its URL, never a credential), and what it did:
    # images restored from it (no request sent), uploaded to it, whose upload failed, and
    # whose upload found the very object there already (another run made it too).
    cache: str | None = None
    restored: int = 0
    uploaded: int = 0
    upload_failed: int = 0
    # Jobs not sent: failed before with an answer a retry cannot change (run --retry-failed
    # sends them); and images made at another size than asked, kept (status lists both).
    held: int = 0
    flagged: int = 0
    already_there: int = 0


@dataclass(frozen=True, slots=True)
class MemberReport:
    """What one member of a backend pool did over the whole run."""

    prefix: str  # the environment prefix naming it (DIFFUSION2); never its key
    requests: int
    images: int
    throttled: int  # 429s it answered
    dropped: str | None  # why it was dropped, or None


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a whole `run` or `merge` came to, and what stopped it early, if anything."""

    plans: tuple[PlanReport, ...]
    members: tuple[MemberReport, ...] = ()  # a pool's members; none for one backend
    interrupted: bool = False
    config_error: ServiceConfigError | None = None  # the service cannot be used as set up
    store_error: StoreError | None = None  # the first write that failed
    version: str | None = None  # of imagebatch, recorded in summary.json when known
    price: Price | None = None  # per image request, when one is set (else cost "unknown")
    budget: Budget | None = None  # the run's budget, if it had one
    budget_reached: bool = False  # the budget was spent: no request started after
    selection: Selection | None = None  # the subset asked for (--only, --first-seeds)

    @property
    def sent(self) -> int:
        """Image requests sent, over every plan."""
        return sum(p.sent for p in self.plans)

    @property
    def stopped_by_budget(self) -> bool:
        """True when the budget left jobs pending (a run to go on with, not a failure)."""
        return self.budget_reached and self.pending > 0

    @property
    def succeeded(self) -> int:
        """Images made, over every plan."""
        return sum(p.succeeded for p in self.plans)

    @property
    def failed(self) -> int:
        """Jobs that failed, over every plan."""
        return sum(p.failed for p in self.plans)

    @property
    def pending(self) -> int:
        """Jobs neither done nor failed, over every plan."""
        return sum(p.pending for p in self.plans)

    @property
    def held(self) -> int:
        """Jobs not sent because their last answer cannot change, over every plan."""
        return sum(p.held for p in self.plans)


def plan_doc(plan: PlanReport, version: str | None = None,
             members: tuple[MemberReport, ...] = (), *, run: RunReport | None = None,
             ) -> dict[str, Any]:
    """One plan as summary.json holds it (keys in their documented order); a pool's
    `members`, and the price, budget and selection of `run`, are the whole run's, the same
    in every plan's summary."""
    price = run.price if run is not None else None
    budget = run.budget if run is not None else None
    selection = run.selection if run is not None else None
    doc: dict[str, Any] = {
        "name": plan.name,
        "manifest": plan.manifest,
        "backend": plan.backend,
        "shard": plan.shard,
        "out": plan.out,
        "planned": plan.planned,
        "succeeded": plan.succeeded,
        "skipped": plan.skipped,
        "failed": plan.failed,
        "pending": plan.pending,
        "requests": plan.requests,
        "seconds": round(plan.seconds, 3),
        "interrupted": plan.interrupted,
        "failures": [{"key": f.key, "path": f.path, "reason": f.reason} for f in plan.failures],
        "image_requests": plan.sent,
        "price": cost_value(price, 1),
        "cost": cost_value(price, plan.sent),
        "budget": None if budget is None else {
            **budget.as_dict(), "sent": run.sent if run is not None else plan.sent,
            "reached": bool(run and run.budget_reached)},
        "stopped_by_budget": bool(run and run.stopped_by_budget and plan.pending),
        "selection": None if selection is None or not selection.active else {
            **selection.as_dict(), "of": plan.selected_of},
        "held": plan.held,
        "flagged": plan.flagged,
    }
    if plan.cache is not None:
        doc["cache"] = plan.cache
        doc["restored"] = plan.restored
        doc["uploaded"] = plan.uploaded
        doc["upload_failed"] = plan.upload_failed
        doc["already_there"] = plan.already_there
    if members:
        doc["members"] = {m.prefix: {"requests": m.requests, "images": m.images,
                                     "throttled": m.throttled, "dropped": m.dropped}
                          for m in members}
    if plan.merged_from is not None:
        doc["merged_from"] = list(plan.merged_from)
    if version is not None:
        doc["version"] = version
    return doc


def summary_json(plan: PlanReport, version: str | None = None) -> str:
    """The text of one plan's summary.json."""
    return json.dumps(plan_doc(plan, version), indent=2, ensure_ascii=False) + "\n"


def docs(report: RunReport) -> list[dict[str, Any]]:
    """Each plan's summary.json document."""
    return [plan_doc(p, report.version, report.members, run=report) for p in report.plans]


def run_json(report: RunReport) -> str:
    """`run --json`: the one plan's summary, or a list of them for several manifests."""
    each = docs(report)
    return json.dumps(each[0] if len(each) == 1 else each, indent=2, ensure_ascii=False)


def spend_text(sent: int, made: int, price: Price | None) -> str:
    """Requests sent, images made, and their cost at the price, on one line."""
    at = f" at {price.format(price.amount)} an image" if price is not None else ""
    return (f"{sent} image request{'s' if sent != 1 else ''} sent, {made} image"
            f"{'s' if made != 1 else ''} made, cost {cost_text(price, sent)}{at}")


def plan_text(plan: PlanReport, price: Price | None = None) -> str:
    """One plan's outcome as a person reads it: counts, spend, each failure, where the
    outputs are."""
    restored = f", {plan.restored} restored from the cache" if plan.cache is not None else ""
    lines = [
        f"{plan.name}: {plan.succeeded} made{restored}, {plan.skipped} already done, "
        f"{plan.failed} failed"
        + (f", {plan.held} not sent again" if plan.held else "")
        + (f", {plan.pending} not run" if plan.pending else "")
        + f" of {plan.planned} in {plan.seconds:.1f} s "
        f"({plan.requests} requests, backend {plan.backend})",
    ]
    if plan.selected_of is not None:
        lines.append(f"  a subset: {plan.planned} of the plan's {plan.selected_of} jobs")
    lines.append(f"  {spend_text(plan.sent, plan.succeeded, price)}")
    if plan.held:
        lines.append(f"  {held_text(plan.held)}")
    if plan.flagged:
        lines.append(f"  {plan.flagged} image(s) made at another size than asked, kept "
                     "(`imagebatch status` lists them)")
    if plan.cache is not None:
        there = f", {plan.already_there} already there" if plan.already_there else ""
        lines.append(f"  cache {plan.cache}: {plan.uploaded} uploaded, "
                     f"{plan.upload_failed} failed to upload{there}")
    lines.extend(f"  FAILED {f.path}: {f.reason}" for f in plan.failures)
    lines.append(f"  outputs: {plan.out}")
    return "\n".join(lines)


def held_text(held: int) -> str:
    """What a run says of the jobs it held back, and how to send them."""
    return (f"{held} failed job(s) not sent again: the same request would get the same "
            "answer (`imagebatch status` lists them); change the request, or run "
            "--retry-failed to send them")


def budget_text(report: RunReport) -> str | None:
    """What the budget did, on one line, or None when the run had none."""
    if report.budget is None:
        return None
    spent = f"{report.sent} of {report.budget.requests} image requests"
    if report.stopped_by_budget:
        return (f"budget reached ({report.budget.describe()}): {spent} sent; "
                f"{report.pending} job(s) left pending; run the same command again to go on")
    return f"budget: {spent} sent ({report.budget.describe()})"


def member_text(member: MemberReport) -> str:
    """One pool member's share of the run, on one line."""
    dropped = f"; dropped: {member.dropped}" if member.dropped else ""
    return (f"  member {member.prefix}: {member.images} images, {member.requests} requests, "
            f"{member.throttled} throttled{dropped}")


def text(report: RunReport) -> str:
    """The summary of a run as a person reads it, one block per manifest, then a line per
    pool member."""
    lines = [plan_text(p, report.price) for p in report.plans]
    if report.members:
        lines.append("pool:")
        lines.extend(member_text(m) for m in report.members)
    if len(report.plans) > 1:
        lines.append(f"in all: {spend_text(report.sent, report.succeeded, report.price)}")
    budget = budget_text(report)
    if budget:
        lines.append(budget)
    after = next_text(report)
    if after:
        lines.append(after)
    return "\n".join(lines)


def next_text(report: RunReport) -> str | None:
    """After a run that sent requests to the embedded server (a newcomer's first run, most
    likely): what to open next, and that its pictures are placeholders. None after any
    other run: one with nothing to send started no server, and a hosted run needs no hint."""
    if report.sent == 0 or report.interrupted or report.config_error is not None \
            or any(p.backend != LOCAL_BACKEND for p in report.plans):
        return None
    lines = ["next:"]
    for p in report.plans:
        if p.index:
            lines.append(f"  open {printable(p.index)} in a browser")
        lines.append(f"  imagebatch review {printable(shlex.quote(p.manifest))}   "
                     "to pick, reject and rate its images")
    lines.append("The embedded local server drew these: placeholder pictures. For the "
                 "model's own, set\nDIFFUSION_URL, DIFFUSION_KEY and DIFFUSION_MODEL_ID (from "
                 "your Heroku app) and run again.")
    return "\n".join(lines)


def merge_text(report: RunReport) -> str:
    """One line per merged plan: what was merged from where into where."""
    return "\n".join(
        f"{p.name}: merged {len(p.merged_from or ())} folder(s): {p.succeeded} ok, "
        f"{p.failed} failed, {p.pending} missing of {p.planned} -> {p.out}"
        for p in report.plans)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: RunReport) -> str:
    """The summary of a run as Markdown (a CI step summary): a table row per manifest, then
    its contact sheets, index and failures."""
    lines = ["## imagebatch", "",
             "| manifest | planned | made | already done | failed | not run | requests | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in report.plans:
        lines.append(f"| `{_cell(p.name)}` | {p.planned} | {p.succeeded} | {p.skipped} | "
                     f"{p.failed} | {p.pending} | {p.requests} | {round(p.seconds, 3)} |")
    if report.members:
        lines += ["", "| pool member | images | requests | throttled | dropped |",
                  "| --- | ---: | ---: | ---: | --- |"]
        lines += [f"| `{_cell(m.prefix)}` | {m.images} | {m.requests} | {m.throttled} | "
                  f"{_cell(m.dropped or '')} |" for m in report.members]
    lines += ["", f"**Spend**: {_cell(spend_text(report.sent, report.succeeded, report.price))}"]
    if report.held:
        lines += ["", f"**Not sent again**: {_cell(held_text(report.held))}"]
    budget = budget_text(report)
    if budget:  # "**Budget reached** (--budget 3): 3 of 3 image requests sent; ..."
        head, paren, rest = budget.partition(" (")
        lines += ["", f"**{_cell(head[:1].upper() + head[1:])}**{_cell(paren + rest)}"]
    cached = [p for p in report.plans if p.cache is not None]
    if cached:
        lines += ["", "| manifest | cache | restored | uploaded | upload failed | "
                      "already there |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| `{_cell(p.name)}` | `{_cell(p.cache)}` | {p.restored} | {p.uploaded} | "
                  f"{p.upload_failed} | {p.already_there} |" for p in cached]
    for p in report.plans:
        lines += _markdown_details(p)
    return "\n".join(lines) + "\n"


def _markdown_details(p: PlanReport) -> list[str]:
    lines: list[str] = []
    extras = []
    if p.sheets:
        extras.append("contact sheets: " + ", ".join(f"`{s}`" for s in p.sheets))
    if p.index:
        extras.append(f"index: `{p.index}`")
    if extras:
        lines += ["", f"**{_cell(p.name)}** ({_cell(p.backend)}): " + "; ".join(extras)]
    if p.failures:
        lines += ["", (f"<details><summary>{len(p.failures)} failed job(s) of "
                       f"{_cell(p.name)}</summary>"), "",
                  "| path | reason |", "| --- | --- |"]
        lines += [f"| `{_cell(f.path)}` | {_cell(f.reason)} |"
                  for f in p.failures[:MAX_FAILURES_MD]]
        if len(p.failures) > MAX_FAILURES_MD:
            lines.append(f"| ... | {len(p.failures) - MAX_FAILURES_MD} more |")
        lines += ["", "</details>"]
    return lines

"""PURE: two Plans in, what changed between them out: jobs added, removed, changed, moved.

A job is its image path and its request key. Jobs are matched by path first: the same path
with another key is *changed* (its image is made again, and a pick made on the old image no
longer applies to it). What is left unmatched is then matched by key: the same request at a
new path is *moved* (a renamed job, a new `output.path`); a run makes it again too, since an
image is done only at the path its plan gives it. The rest is *added* or *removed*. Order
does not matter: a matrix axis written in another order makes the same jobs, so no change.

Nothing here touches the disk, git, the network or the environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .plan import Job, Plan

#: Why a decision goes stale: its image is made again from another request, its path has no
#: job any more, or its request moved to another path (the decision stays on the old one).
CHANGED, REMOVED, MOVED = "changed", "removed", "moved"


class Decision(Protocol):
    """An entry of a picks file, as imagebatch.storage.picks.PickEntry holds it."""

    @property
    def key(self) -> str:
        """The key of the job the decision was made on."""

    @property
    def status(self) -> str | None:
        """'pick', 'reject' or None."""

    @property
    def rating(self) -> int | None:
        """1..5 or None."""


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One request field whose value differs (None: the field is not in that request)."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Changed:
    """One image path whose request changed: the image is made again."""

    old: Job
    new: Job
    fields: tuple[FieldChange, ...]  # the request fields that differ, sorted by name

    @property
    def path(self) -> str:
        """The image path (the same in both plans)."""
        return self.new.path


@dataclass(frozen=True, slots=True)
class Moved:
    """One request now written to another path (a renamed job, a new output.path)."""

    old: Job
    new: Job


@dataclass(frozen=True, slots=True)
class StalePick:
    """A decision of the picks file that this change leaves on no picture (or another one)."""

    path: str
    status: str | None  # pick | reject | None (only rated)
    rating: int | None
    why: str  # CHANGED | REMOVED | MOVED
    moved_to: str | None = None  # with MOVED: the path the request moved to

    @property
    def what(self) -> str:
        """The decision as a person reads it: 'pick, rated 5', 'reject', 'rated 3'."""
        parts = [self.status] if self.status else []
        if self.rating is not None:
            parts.append(f"rated {self.rating}")
        return ", ".join(parts) or "undecided"


@dataclass(frozen=True, slots=True)
class PlanDiff:
    """What changed from an old plan (None: none could be read) to a new one (None: gone)."""

    old_total: int | None  # None: no old plan (the manifest did not exist or was unreadable)
    new_total: int
    added: tuple[Job, ...]
    removed: tuple[Job, ...]
    changed: tuple[Changed, ...]
    moved: tuple[Moved, ...]
    unchanged: int
    stale_picks: tuple[StalePick, ...]

    @property
    def regenerated(self) -> tuple[Job, ...]:
        """The new plan's jobs this change makes again or new: added, changed, moved."""
        return (*self.added, *(c.new for c in self.changed), *(m.new for m in self.moved))

    @property
    def is_empty(self) -> bool:
        """No job added, removed, changed or moved, and no decision made stale."""
        return not (self.added or self.removed or self.changed or self.moved
                    or self.stale_picks)


def request_changes(old: Job, new: Job) -> tuple[FieldChange, ...]:
    """The request fields whose values differ between two jobs, sorted by field name."""
    a, b = old.request, new.request
    return tuple(FieldChange(f, a.get(f), b.get(f)) for f in sorted(a.keys() | b.keys())
                 if a.get(f) != b.get(f))


def diff_plans(old: Plan | None, new: Plan | None,
               decisions: Mapping[str, Decision] | None = None) -> PlanDiff:
    """What changed from `old` to `new`, and which `decisions` (picks file entries by path)
    go stale.

    A decision goes stale when it matched the old plan (the old job at its path has its key)
    and does not match the new one. With no old plan (a new manifest, or one that could not
    be read at the old revision), every decision that does not match the new plan is
    listed, since none can be told apart from one that was stale already.
    """
    old_jobs = {j.path: j for j in old.jobs} if old is not None else {}
    new_jobs = {j.path: j for j in new.jobs} if new is not None else {}
    changed: list[Changed] = []
    unchanged = 0
    for path, job in new_jobs.items():
        before = old_jobs.get(path)
        if before is None:
            continue
        if before.key == job.key:
            unchanged += 1
        else:
            changed.append(Changed(before, job, request_changes(before, job)))
    gone = {j.key: j for p, j in old_jobs.items() if p not in new_jobs}
    moved: list[Moved] = []
    added: list[Job] = []
    for path, job in new_jobs.items():
        if path in old_jobs:
            continue
        before = gone.pop(job.key, None)
        if before is not None:
            moved.append(Moved(before, job))
        else:
            added.append(job)
    removed = sorted(gone.values(), key=lambda j: j.index)
    stale = _stale(old, old_jobs, new_jobs, {m.old.path: m.new.path for m in moved},
                   decisions or {})
    by_index = lambda item: item.new.index  # noqa: E731 - the new plan's order
    return PlanDiff(
        old_total=len(old.jobs) if old is not None else None,
        new_total=len(new.jobs) if new is not None else 0,
        added=tuple(added), removed=tuple(removed),
        changed=tuple(sorted(changed, key=by_index)), moved=tuple(sorted(moved, key=by_index)),
        unchanged=unchanged, stale_picks=stale)


def _stale(old: Plan | None, old_jobs: Mapping[str, Job], new_jobs: Mapping[str, Job],
           moved_to: Mapping[str, str], decisions: Mapping[str, Decision]
           ) -> tuple[StalePick, ...]:
    out: list[StalePick] = []
    for path, entry in sorted(decisions.items()):
        if entry.status is None and entry.rating is None:
            continue  # says nothing
        now = new_jobs.get(path)
        if now is not None and now.key == entry.key:
            continue  # still on its picture
        before = old_jobs.get(path)
        if old is not None and (before is None or before.key != entry.key):
            continue  # stale already before this change: not this change's doing
        if path in moved_to:
            why, to = MOVED, moved_to[path]
        else:
            why, to = (CHANGED if now is not None else REMOVED), None
        out.append(StalePick(path, entry.status, entry.rating, why, to))
    return tuple(out)


def job_doc(job: Job) -> dict[str, Any]:
    """A job as the diff's JSON shows it: path, key, id, seed, vars and the request."""
    return {"path": job.path, "key": job.key, "id": job.id, "seed": job.seed,
            "vars": dict(job.vars), "request": json.loads(job.body)}


@dataclass(frozen=True, slots=True)
class ChangeGroup:
    """Changed jobs that share one change of their request's fields (seed left out)."""

    fields: tuple[FieldChange, ...]
    jobs: tuple[Changed, ...]


def change_groups(changed: tuple[Changed, ...]) -> tuple[ChangeGroup, ...]:
    """Changed jobs grouped by what changed (the same prompt edit across seeds is one group),
    in the order each group first appears."""
    groups: dict[str, list[Changed]] = {}
    fields: dict[str, tuple[FieldChange, ...]] = {}
    for c in changed:
        shown = tuple(f for f in c.fields if f.field != "seed")
        sig = json.dumps([[f.field, f.old, f.new] for f in shown], sort_keys=True,
                         ensure_ascii=False)
        groups.setdefault(sig, []).append(c)
        fields.setdefault(sig, shown)
    return tuple(ChangeGroup(fields[s], tuple(js)) for s, js in groups.items())

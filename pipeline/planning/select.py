"""PURE: a subset of a plan: `--only PATTERN` and `--first-seeds N`.

A selection narrows the jobs a command acts on without changing a single job: keys, paths
and requests stay those of the whole plan, so what a subset made is done for the full run.
`--only` keeps jobs whose id or image path matches any of its globs (fnmatch, case
sensitive); `--first-seeds N` keeps the first N seeds of each variant (a job id with its
variable values), in plan order. Both together keep what both keep. A shard is applied
after the selection, so that "the first seed of each variant" is the same jobs whichever
shard runs them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..errors import UsageError
from .plan import Job, Plan, in_shard

MAX_SUGGESTIONS = 5  # close ids named when a pattern matches nothing


@dataclass(frozen=True, slots=True)
class Selection:
    """Which jobs of a plan to act on: `only` globs and the first `first_seeds` seeds."""

    only: tuple[str, ...] = ()
    first_seeds: int | None = None

    @property
    def active(self) -> bool:
        """True when the selection leaves jobs out (anything was asked)."""
        return bool(self.only) or self.first_seeds is not None

    def describe(self) -> str:
        """The selection as options on a command line: `--only 'fox*' --first-seeds 1`."""
        parts = [f"--only {p!r}" for p in self.only]
        if self.first_seeds is not None:
            parts.append(f"--first-seeds {self.first_seeds}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """For JSON: {"only": [...], "first_seeds": N or null}."""
        return {"only": list(self.only), "first_seeds": self.first_seeds}


ALL = Selection()


def matches(job: Job, pattern: str) -> bool:
    """Whether `pattern` (a glob) matches the job's id or its image path."""
    return fnmatchcase(job.id, pattern) or fnmatchcase(job.path, pattern)


def first_seeds(jobs: Iterable[Job], n: int) -> list[Job]:
    """The first `n` jobs of each variant (job id and variable values), in plan order."""
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    kept = []
    for job in sorted(jobs, key=lambda j: j.index):
        variant = (job.id, job.vars)
        count = seen.get(variant, 0)
        if count < n:
            kept.append(job)
        seen[variant] = count + 1
    return kept


def unmatched(plans: Sequence[Plan], selection: Selection) -> list[str]:
    """The `only` patterns that match no job of any of `plans`."""
    return [p for p in selection.only
            if not any(matches(j, p) for plan in plans for j in plan.jobs)]


def no_match_message(pattern: str, plans: Sequence[Plan]) -> str:
    """Why `pattern` selects nothing, naming the ids (or paths) it could have meant."""
    ids = sorted({j.id for plan in plans for j in plan.jobs})
    # A glob is compared as the text it is: close ids, else close paths ("fox/watercolr/1.png").
    close = difflib.get_close_matches(pattern, ids, n=MAX_SUGGESTIONS, cutoff=0.5)
    if not close:
        paths = sorted({j.path for plan in plans for j in plan.jobs})
        close = difflib.get_close_matches(pattern, paths, n=MAX_SUGGESTIONS, cutoff=0.5)
    hint = (f"did you mean {', '.join(close)}?" if close else
            f"the job ids are {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''}")
    return (f"--only {pattern!r} matches no job id or image path; {hint} "
            "(a pattern is a glob such as 'fox*' or 'fox/*/1.png'); nothing was sent")


def check(plans: Sequence[Plan], selection: Selection) -> None:
    """UsageError when a pattern matches no job of the whole `plans` (before any shard)."""
    missing = unmatched(plans, selection)
    if missing:
        raise UsageError(no_match_message(missing[0], plans))


def select_jobs(jobs: Sequence[Job], selection: Selection) -> tuple[Job, ...]:
    """The jobs `selection` keeps, in plan order."""
    kept: Iterable[Job] = jobs
    if selection.only:
        kept = [j for j in kept if any(matches(j, p) for p in selection.only)]
    if selection.first_seeds is not None:
        kept = first_seeds(kept, selection.first_seeds)
    return tuple(sorted(kept, key=lambda j: j.index))


def narrow(plan: Plan, selection: Selection, shard: tuple[int, int] | None = None) -> Plan:
    """The whole `plan` narrowed to `selection`, then to `shard` (K, N) if given.

    `plan` must be the whole plan (loaded without a shard) when the selection is active, so
    that the first seeds of a variant do not depend on the shard.
    """
    if not selection.active and shard is None:
        return plan
    if plan.shard is not None and selection.first_seeds is not None:
        raise ValueError("narrow() needs the whole plan to take the first seeds of a variant")
    jobs = select_jobs(plan.jobs, selection) if selection.active else plan.jobs
    if shard is not None:
        jobs = tuple(j for j in jobs if in_shard(j.key, shard))
    return dataclasses.replace(plan, jobs=jobs, shard=shard if shard else plan.shard)


def narrow_all(plans: Sequence[Plan], selection: Selection,
               shard: tuple[int, int] | None = None) -> list[Plan]:
    """Every whole plan narrowed (see `narrow`), after checking that each pattern matches
    some job of one of them (UsageError otherwise)."""
    check(plans, selection)
    return [narrow(p, selection, shard) for p in plans]

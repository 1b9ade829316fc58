"""PURE: what a run of a plan would act on: jobs, done, restorable from a cache, to send,
and what sending them costs at the price.

`plan` prints these; the states come from the one definition of done (the store's
`job_states`), the restorable jobs from a cache lookup when a cache is set, and the price
from `--price` / $IMAGEBATCH_PRICE. Nothing here reads the disk or the environment.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from .costs import Price, cost_text, cost_value
from .plan import Job


@dataclass(frozen=True, slots=True)
class PlanCounts:
    """The counts of a run not yet made: what is done, restorable, to send, and its cost."""

    jobs: int
    done: int
    restorable: int | None  # None: no cache is set (not 0: nothing was looked up)
    to_send: int
    price: Price | None
    held: int = 0  # failed with an answer a retry cannot change: not sent (--retry-failed)

    @property
    def cost(self) -> str:
        """What sending costs, as a person reads it ("$0.64", or "unknown (...)")."""
        return cost_text(self.price, self.to_send)

    def as_dict(self) -> dict[str, Any]:
        """For `plan --counts-json`: numbers, and the cost as a decimal string or null."""
        return {
            "jobs": self.jobs,
            "done": self.done,
            "restorable": self.restorable,
            "to_send": self.to_send,
            "held": self.held,
            "price": cost_value(self.price, 1),
            "cost": cost_value(self.price, self.to_send),
        }

    def lines(self) -> list[str]:
        """The counts as the lines `plan` ends with."""
        cache = ("no cache set" if self.restorable is None
                 else f"{self.restorable} restorable from the cache")
        if self.price is None:
            cost = f"estimated cost: {self.cost}"
        else:
            cost = (f"estimated cost: {self.cost} ({self.to_send} requests at "
                    f"{self.price.format(self.price.amount)} an image; retries cost more)")
        held = (f", {self.held} held back (an answer a retry cannot change; "
                "run --retry-failed sends them)" if self.held else "")
        return [f"a run would act on {self.jobs} jobs: {self.done} already done, {cache}, "
                f"{self.to_send} to send{held}", cost]


def count_plan(
    jobs: Iterable[Job], done_keys: AbstractSet[str], restorable_keys: AbstractSet[str] | None,
    price: Price | None, held_keys: AbstractSet[str] = frozenset(),
) -> PlanCounts:
    """The counts of `jobs`: a job is done when its key is in `done_keys` (the store's DONE
    states), restorable when not done and its key is in `restorable_keys` (what a cache can
    restore; None when no cache is set), held back when its key is in `held_keys` (a final
    failure, which `run` does not send again), and to send otherwise: one request each, at
    `price`.
    """
    total = done = restorable = held = 0
    for job in jobs:
        total += 1
        if job.key in done_keys:
            done += 1
        elif restorable_keys is not None and job.key in restorable_keys:
            restorable += 1
        elif job.key in held_keys:
            held += 1
    return PlanCounts(
        jobs=total, done=done, restorable=None if restorable_keys is None else restorable,
        to_send=total - done - restorable - held, price=price, held=held)

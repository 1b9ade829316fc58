"""PURE: a run's budget: `--budget N` image requests, `--budget-cost AMOUNT` at the price.

A budget is a number of image requests this run may send, retries and requests a pool moved
to another member included (each one is sent, so each is billed or throttled). A budget in
money is turned into requests at the price per image (`--price` / $IMAGEBATCH_PRICE): it
needs one. When both are given, the smaller number of requests is the budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from ..errors import UsageError
from .costs import PRICE_VARIABLE, Price, parse_amount

#: A distinct exit status for a run that stopped because its budget was spent (0, 1, 2,
#: 130 and 141 are taken: done, jobs failed, bad input or setup, interrupted, broken pipe).
BUDGET_EXIT = 3
_PLAIN = re.compile(r"\s*(\d+(\.\d+)?|\.\d+)\s*\Z")  # an amount written without a currency


@dataclass(frozen=True, slots=True)
class Budget:
    """How many image requests a run may send, and what the user asked for."""

    requests: int  # the most image requests this run sends
    asked_requests: int | None = None  # --budget, as given
    asked_cost: Price | None = None  # --budget-cost, as given (an amount, as written)
    price: Price | None = None  # the price per image the cost budget was turned by

    def describe(self) -> str:
        """What the budget is, for a person: `--budget 5`, `--budget-cost $0.40 (5 requests
        at $0.08)`."""
        parts = []
        if self.asked_requests is not None:
            parts.append(f"--budget {self.asked_requests}")
        if self.asked_cost is not None and self.price is not None:
            parts.append(f"--budget-cost {self.asked_cost.format(self.asked_cost.amount)} "
                         f"({self.requests_for_cost} requests at "
                         f"{self.price.format(self.price.amount)})")
        return ", ".join(parts)

    @property
    def requests_for_cost(self) -> int | None:
        """The requests the cost budget buys at the price, or None without one."""
        if self.asked_cost is None or self.price is None or self.price.amount == 0:
            return None
        return int(self.asked_cost.amount // self.price.amount)

    def as_dict(self) -> dict[str, object]:
        """For summary.json: the limit in requests, and the options it came from."""
        return {
            "requests": self.requests,
            "asked_requests": self.asked_requests,
            "asked_cost": (None if self.asked_cost is None
                           else format(self.asked_cost.amount.normalize(), "f")),
        }


def budget_from(requests: int | None, cost: str | None, price: Price | None) -> Budget | None:
    """The budget `--budget` / `--budget-cost` ask for at `price`, or None for no budget.

    UsageError (exit 2, before anything is sent) for a budget of 0 or less, an amount that
    is not one, a cost budget without a price, at a price of 0, in another currency than
    the price's, or that does not buy a single image.
    """
    if requests is None and cost is None:
        return None
    if requests is not None and requests < 1:
        raise UsageError(f"--budget {requests}: give at least 1 request")
    if cost is None:
        assert requests is not None
        return Budget(requests, asked_requests=requests)
    asked = parse_amount(cost, "--budget-cost")
    if asked.amount <= 0:
        raise UsageError(f"--budget-cost {cost!r}: give an amount more than 0")
    if price is None:
        raise UsageError(f"--budget-cost needs the price of one image: give --price AMOUNT "
                         f"or set {PRICE_VARIABLE}")
    if price.amount == 0:
        raise UsageError(f"--budget-cost: at a price of {price.format(Decimal(0))} an image "
                         "it caps nothing; give --budget N to cap the requests")
    if not _PLAIN.match(cost) and asked.currency != price.currency:
        raise UsageError(f"--budget-cost {cost!r} is not in the currency of the price "
                         f"({price.format(price.amount)}); write both in one currency")
    asked = Price(asked.amount, price.prefix, price.suffix)
    bought = int(asked.amount // price.amount)
    if bought < 1:
        raise UsageError(f"--budget-cost {asked.format(asked.amount)} does not buy one image "
                         f"at {price.format(price.amount)}; nothing would be sent")
    limit = bought if requests is None else min(requests, bought)
    return Budget(limit, asked_requests=requests, asked_cost=asked, price=price)

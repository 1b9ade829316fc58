"""PURE: the price of one image request, and what a number of requests costs.

A price is the user's setting (`--price AMOUNT` or `$IMAGEBATCH_PRICE`), never a guess:
without one, a cost is "unknown", never $0. Amounts are Decimals so that 17 x 0.08 is 1.36
exactly, and they print with the currency the user wrote (`0.08`, `$0.08`, `0.08 USD`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ..errors import UsageError

PRICE_VARIABLE = "IMAGEBATCH_PRICE"
#: An amount as a person writes it: an optional currency sign or code around a plain number.
_AMOUNT = re.compile(
    r"\s*(?P<pre>[$€£¥]|[A-Z]{3}\s)?\s*(?P<num>\d+(?:\.\d+)?|\.\d+)\s*(?P<post>\s?[A-Z]{3})?\s*\Z")
_MAX_PRICE = Decimal(1000)  # per image: anything above is a typo (a price per 1,000 images)


@dataclass(frozen=True, slots=True)
class Price:
    """What one image request costs: an amount and how to write it (`$` or `USD`)."""

    amount: Decimal
    prefix: str = "$"  # a currency sign written before the amount ("" for none)
    suffix: str = ""  # a currency code written after it (" EUR")

    @property
    def currency(self) -> str:
        """The currency as an ISO code: `$0.08`, `USD 0.08` and `0.08 USD` are all USD."""
        return _SIGNS.get(self.prefix, self.prefix) or self.suffix.strip()

    def of(self, requests: int) -> Decimal:
        """The cost of `requests` image requests."""
        return self.amount * requests

    def format(self, amount: Decimal) -> str:
        """`amount` written as the price was: `$1.36`, `1.36 EUR`."""
        return f"{self.prefix}{_money(amount)}{self.suffix}"


#: Currency signs as the codes a person may write instead (`$` is taken as US dollars).
_SIGNS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}


def parse_amount(text: str, what: str) -> Price:
    """`text` as a Price (`0.08`, `$0.08`, `0.08 USD`); UsageError naming `what` otherwise.

    Zero is allowed (a free self-hosted server); a negative, a non-number, NaN or more than
    1,000 per image is refused.
    """
    m = _AMOUNT.match(text or "")
    if m is None:
        raise UsageError(f"{what}: {text!r} is not an amount of money; write it like 0.08 "
                         f"or $0.08 (the price of one image)")
    try:
        amount = Decimal(m["num"])
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain numbers
        raise UsageError(f"{what}: {text!r} is not a number") from None
    if amount > _MAX_PRICE:
        raise UsageError(f"{what}: {text!r} is more than {_MAX_PRICE} an image; give the price "
                         f"of one image")
    pre = (m["pre"] or "").strip()
    post = (m["post"] or "").strip()
    if pre and len(pre) == 3:  # "USD 0.08": a code in front is written after
        pre, post = "", pre
    if not pre and not post:
        pre = "$"
    return Price(amount, prefix=pre, suffix=f" {post}" if post else "")


def price_from(option: str | None, env: Mapping[str, str]) -> Price | None:
    """The price per image from `--price` (first) or $IMAGEBATCH_PRICE, or None (unknown)."""
    if option is not None:
        return parse_amount(option, "--price")
    value = (env.get(PRICE_VARIABLE) or "").strip()
    if not value:
        return None
    return parse_amount(value, PRICE_VARIABLE)


def cost_text(price: Price | None, requests: int) -> str:
    """What `requests` requests cost, as a person reads it: `$1.36`, or `unknown (no price
    set: --price or IMAGEBATCH_PRICE)`."""
    if price is None:
        return f"unknown (no price set: --price or {PRICE_VARIABLE})"
    return price.format(price.of(requests))


def cost_value(price: Price | None, requests: int) -> str | None:
    """The cost of `requests` for JSON: a decimal string ("1.36"), or None when unknown."""
    return None if price is None else _money(price.of(requests))


def _money(amount: Decimal) -> str:
    """At least two decimals, more only when the amount has them (0.085 x 3 = 0.255)."""
    text = format(amount.normalize(), "f")
    whole, _dot, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"

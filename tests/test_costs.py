"""The price per image and what requests cost (imagebatch.planning.costs)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from imagebatch.errors import UsageError
from imagebatch.planning.costs import cost_text, cost_value, parse_amount, price_from


@pytest.mark.parametrize(("text", "amount", "written"), [
    ("0.08", "0.08", "$1.36"),
    ("$0.08", "0.08", "$1.36"),
    ("0.08 USD", "0.08", "1.36 USD"),
    ("EUR 0.08", "0.08", "1.36 EUR"),
    ("€0.08", "0.08", "€1.36"),
    (".5", "0.5", "$8.50"),
    ("0", "0", "$0.00"),
    ("0.085", "0.085", "$1.445"),
])
def test_parse_and_format(text: str, amount: str, written: str) -> None:
    price = parse_amount(text, "--price")
    assert price.amount == Decimal(amount)
    assert price.format(price.of(17)) == written


@pytest.mark.parametrize("text", ["", "abc", "-0.08", "nan", "inf", "1e3", "0.08.1", "1001"])
def test_bad_amounts_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(UsageError, match="--price"):
        parse_amount(text, "--price")


def test_option_wins_over_the_environment_and_none_is_unknown() -> None:
    env = {"IMAGEBATCH_PRICE": "0.10"}
    assert price_from("0.08", env).amount == Decimal("0.08")  # type: ignore[union-attr]
    assert price_from(None, env).amount == Decimal("0.10")  # type: ignore[union-attr]
    assert price_from(None, {}) is None
    with pytest.raises(UsageError, match="IMAGEBATCH_PRICE"):
        price_from(None, {"IMAGEBATCH_PRICE": "cheap"})


def test_unknown_cost_is_never_zero() -> None:
    assert cost_text(None, 5).startswith("unknown")
    assert cost_value(None, 5) is None
    assert cost_value(parse_amount("0.08", "x"), 3) == "0.24"

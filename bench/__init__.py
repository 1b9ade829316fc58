"""Benchmarks: `python -m bench` runs every bench_*.py module and prints one table."""

from __future__ import annotations

#: The keys of every row, in the order the table and bench/results.json show them.
KEYS: tuple[str, ...] = ("bench", "metric", "value", "unit", "target", "ok", "note")


def row(bench: str, metric: str, value: float, unit: str, target: str | None = None,
        ok: bool | None = None, note: str = "") -> dict:
    """One result row with exactly KEYS."""
    return {"bench": bench, "metric": metric, "value": value, "unit": unit,
            "target": target or "", "ok": ok, "note": note}

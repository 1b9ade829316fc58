"""Run every benchmark module, print one table, write bench/results.json.

Each module `bench/bench_<topic>.py` exposes `run() -> list[dict]`, each dict a row:
{"bench": str, "metric": str, "value": float, "unit": str, "target": str, "ok": bool|None,
"note": str}
(`bench.row()` builds one). Rows are normalised to exactly these keys before they are shown:
a missing `bench` is the module's topic, other missing keys are empty, extra keys are dropped
with a warning. Targets are ratios or bounds measured side by side in this one run, never
timed asserts in tests. The machine the figures came from is printed above the table and
stored with the rows.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from bench import KEYS

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, object]:
    """Describe the machine the figures came from."""
    mem_kb = 0
    try:
        with open("/proc/meminfo") as fh:
            mem_kb = int(fh.readline().split(":", 1)[1].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh
                        if ln.startswith("model name")), "")
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cores": os.cpu_count(), "cpu": cpu or platform.processor() or platform.machine(),
            "memory": f"{mem_kb / 1024 / 1024:.1f} GiB" if mem_kb else "unknown",
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(), "load_average_at_start": round(load, 2)}


def describe(m: dict[str, object]) -> str:
    """The machine on one line."""
    return (f"machine: {m['cores']} cores, {m['cpu']}, {m['memory']} memory, {m['python']}, "
            f"{m['platform']}; load average {m['load_average_at_start']} at start")


def _error(topic: str, message: str) -> dict:
    return {"bench": topic, "metric": "error", "value": float("nan"), "unit": "", "target": "",
            "ok": False, "note": message}


def normalise(topic: str, raw: object) -> dict:
    """A row with exactly KEYS, whatever the module returned."""
    if not isinstance(raw, dict):
        return _error(topic, f"row is a {type(raw).__name__}, not a dict: {raw!r}"[:300])
    extra = sorted(set(raw) - set(KEYS))
    if extra:
        print(f"   note: bench_{topic} row {raw.get('metric')!r} has extra key(s) "
              f"{', '.join(extra)}; dropped", file=sys.stderr)
    value = raw.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        try:
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = float("nan")
    ok = raw.get("ok")
    return {"bench": str(raw.get("bench") or topic), "metric": str(raw.get("metric") or ""),
            "value": value, "unit": str(raw.get("unit") or ""),
            "target": str(raw.get("target") or ""), "ok": None if ok is None else bool(ok),
            "note": str(raw.get("note") or "")}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def main(argv: list[str]) -> int:
    """Run the selected (default: all) benchmark modules."""
    wanted = set(argv)
    info = machine()
    print(describe(info), file=sys.stderr, flush=True)
    rows: list[dict] = []
    for path in sorted(HERE.glob("bench_*.py")):
        topic = path.stem.removeprefix("bench_")
        if wanted and topic not in wanted:
            continue
        print(f"== {topic}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            mod = importlib.import_module(f"bench.{path.stem}")
            rows.extend(normalise(topic, r) for r in mod.run())
        except Exception as exc:  # noqa: BLE001 - a broken bench must not hide the others' figures
            rows.append(_error(topic, f"{type(exc).__name__}: {exc}"[:300]))
        print(f"   {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    widths = [14, 52, 12, 8, 18, 4]
    print(describe(info) + "\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(KEYS, widths, strict=False)) + " | note |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|------|")
    for r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r["ok"]]
        cells = [r["bench"], r["metric"], _cell(r["value"]), r["unit"], r["target"], ok]
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
              + f" | {r['note']} |")
    stored = [{**r, "value": None if isinstance(r["value"], float) and math.isnan(r["value"])
               else r["value"]} for r in rows]  # strict JSON: no NaN
    out = {"machine": info, "rows": stored, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    (HERE / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {HERE / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

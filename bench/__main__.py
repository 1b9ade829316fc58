"""Run every benchmark module, print one table, write bench/results.json.

Each module `bench/bench_<topic>.py` exposes `run() -> list[dict]`, each dict a row:
{"bench": str, "metric": str, "value": float, "unit": str, "target": str, "ok": bool|None, "note": str}.
Targets are ratios or bounds measured side by side in this one run, never timed asserts in tests.
"""

from __future__ import annotations

import importlib
import json
import platform
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, object]:
    """Describe the machine the figures came from."""
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = fh.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem,
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str]) -> int:
    """Run the selected (default: all) benchmark modules."""
    wanted = set(argv)
    rows: list[dict] = []
    for path in sorted(HERE.glob("bench_*.py")):
        topic = path.stem.removeprefix("bench_")
        if wanted and topic not in wanted:
            continue
        print(f"== {topic}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        mod = importlib.import_module(f"bench.{path.stem}")
        try:
            rows.extend(mod.run())
        except Exception as exc:  # a broken bench must not hide the others' figures
            rows.append({"bench": topic, "metric": "error", "value": float("nan"), "unit": "",
                         "target": "", "ok": False, "note": f"{type(exc).__name__}: {exc}"})
        print(f"   {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    widths = [14, 52, 12, 8, 18, 4]
    head = ["bench", "metric", "value", "unit", "target", "ok"]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " | note |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|------|")
    for r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r.get("ok")]
        val = r["value"]
        sval = f"{val:.3g}" if isinstance(val, float) else str(val)
        cells = [r["bench"], r["metric"], sval, r.get("unit", ""), r.get("target", ""), ok]
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths))
              + f" | {r.get('note', '')} |")
    out = {"machine": machine(), "rows": rows, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    (HERE / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {HERE / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

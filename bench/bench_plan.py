"""Planning figures: time and peak memory to load, validate and expand a 100,000-job manifest.

Each measurement runs in a fresh process (so imports and earlier runs do not blur the
memory figure) and reports its own wall time around `load_plan` and its `ru_maxrss`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import clean_rss, row

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "plan"
RUNS = 3

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from imagebatch.errors import ManifestError
from imagebatch.planning.manifest import load_plan
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    jobs = len(load_plan(sys.argv[2], max_jobs=int(sys.argv[3])).jobs)
except ManifestError:
    jobs = -1
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"jobs": jobs, "seconds": seconds, "peak_kb": peak, "base_kb": base}))
"""


def sweep_manifest(a: int = 50, b: int = 40, seeds: int = 50, extra: str = "") -> str:
    """A matrix of a x b variables times `seeds` seeds: a*b*seeds jobs."""
    va = ", ".join(f"a{i}" for i in range(a))
    vb = ", ".join(f"b{i}" for i in range(b))
    return (f"version: 1\nname: sweep\njobs:\n  - id: sweep\n"
            f"    prompt: \"A {{a}} beside a {{b}}, detailed, soft light\"\n"
            f"    negative_prompt: \"blurry, watermark\"\n    aspect_ratio: \"16:9\"\n"
            f"    matrix:\n      a: [{va}]\n      b: [{vb}]\n{extra}"
            f"    seeds: {{start: 1, count: {seeds}}}\n")


def measure(path: Path, max_jobs: int) -> dict:
    """Run one planning in a fresh interpreter; its own timings and peak RSS."""
    res = subprocess.run(clean_rss([sys.executable, "-c", CHILD, str(ROOT), str(path),
                                    str(max_jobs)]),
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def cli_seconds(path: Path, max_jobs: int) -> tuple[float, int]:
    """Wall time of `imagebatch plan --json` end to end (interpreter start included)."""
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "imagebatch", "plan", str(path), "--json",
                          "--max-jobs", str(max_jobs)], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started, len(res.stdout)


def _row(metric: str, value: float, unit: str, target: str | None, ok: bool | None,
         note: str) -> dict:
    return row("plan", metric, value, unit, target, ok, note)


def run() -> list[dict]:
    """Plan 100k jobs (time, peak memory), the CLI's JSON of it, and a refused 10^12 sweep."""
    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / "sweep-100k.yaml"
    big.write_text(sweep_manifest(), encoding="utf-8")
    runs = [measure(big, 100_000) for _ in range(RUNS)]
    assert all(r["jobs"] == 100_000 for r in runs), runs
    seconds = statistics.median(r["seconds"] for r in runs)
    peak_mb = max(r["peak_kb"] for r in runs) / 1024
    base_mb = min(r["base_kb"] for r in runs) / 1024
    rows = [
        _row("plan 100k jobs (load+validate+expand)", seconds, "s", "< 2 s", seconds < 2,
             f"median of {RUNS} fresh processes; matrix 50 x 40 x 50 seeds"),
        _row("plan 100k jobs peak memory", peak_mb, "MB", "< 300 MB", peak_mb < 300,
             f"ru_maxrss of the process; {base_mb:.0f} MB of it is the interpreter and imports"),
        _row("plan 100k jobs per job", seconds / 100_000 * 1e6, "us", None, None,
             "load, validate, expand, key and path per job"),
    ]
    cli = sorted(cli_seconds(big, 100_000) for _ in range(RUNS))
    wall, size = cli[len(cli) // 2]
    rows.append(_row("plan --json 100k jobs, whole command", wall, "s", None, None,
                     f"median of {RUNS}; interpreter start included; {size / 1e6:.1f} MB of JSON"))
    huge = WORK / "sweep-1e12.yaml"
    extra = "      c: [" + ", ".join(str(i) for i in range(100)) + "]\n"
    huge.write_text(sweep_manifest(100, 100, 1_000_000, extra).replace(
        "{b}, detailed", "{b} {c}, detailed"), encoding="utf-8")
    refused = [measure(huge, 5000) for _ in range(RUNS)]
    assert all(r["jobs"] == -1 for r in refused), refused
    rows.append(_row("refuse a 10^12-job sweep", statistics.median(r["seconds"] for r in refused),
                     "s", None, None, "the cap is judged from axis sizes, nothing expanded"))
    growth = max(r["peak_kb"] - r["base_kb"] for r in refused) / 1024
    rows.append(_row("refuse a 10^12-job sweep, memory growth", growth, "MB", "< 20 MB",
                     growth < 20, "ru_maxrss after minus before loading"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)

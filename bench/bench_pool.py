"""A backend pool's figures: three model resources used together, a slow member, a member
whose key is refused mid-run, and the client's CPU per job at full rate.

Each member is the stand-in API of bench_runner in its own process, with a sliding-window
limit of 20 requests per 3 s (the hosted limit of 20 a minute, 20 times faster); the
client is the real `run_plans` in another process, given the members as DIFFUSION,
DIFFUSION2, DIFFUSION3 with a key each.
"""

from __future__ import annotations

import shutil

from bench import row, run_parts
from bench.bench_runner import WORK, Server, _fresh, client

LIMIT, WINDOW = 20, 3.0  # per member
RPM = LIMIT * 60 / WINDOW  # --rpm per member: one start every 0.15 s
PREFIXES = ("DIFFUSION", "DIFFUSION2", "DIFFUSION3")
HOSTED_RPM = 20.0  # the real limit per model resource


def _row(metric: str, value: float, unit: str, target: str, ok: bool | None, note: str) -> dict:
    return row("pool", metric, value, unit, target, ok, note)


def _measure(name: str, n: int, concurrency: int, latencies: tuple[float, ...],
             revoke_after: tuple[float, ...] = (0.0, 0.0, 0.0)
             ) -> tuple[dict, list[list[tuple[float, int]]]]:
    """Run `n` jobs on a pool of stand-in servers: (the client's figures, each server's log
    of (time, status))."""
    servers = [Server(latency=lat, rpm=LIMIT, window=WINDOW, revoke_after=rev)
               for lat, rev in zip(latencies, revoke_after, strict=True)]
    try:
        res = client(dict(zip(PREFIXES, (s.url for s in servers), strict=False)), _fresh(name), n,
                     concurrency, RPM)
        return res, [[(t, s) for t, s in srv.stats()["log"]] for srv in servers]
    finally:
        for srv in servers:
            srv.close()


def bench_throughput(rows: list[dict]) -> None:
    """3 members, 300 jobs: images per window against 3 x 20, 429s after the first window,
    and the client's CPU per job at that rate."""
    n = 300
    res, logs = _measure("pool", n, 12, (0.05, 0.05, 0.05))
    ok = sorted(t for log in logs for t, s in log if s == 200)
    t0 = ok[0]
    late_429 = sum(1 for log in logs for t, s in log if s == 429 and t > t0 + WINDOW)
    span = ok[-1] - t0
    per_window = (len(ok) - 1) / span * WINDOW if span > 0 else 0.0
    full = [sum(1 for t in ok if t0 + k * WINDOW <= t < t0 + (k + 1) * WINDOW)
            for k in range(int(span // WINDOW))]
    target = 0.97 * LIMIT * len(logs)
    rows.append(_row("images per 3 s window, 3 members x 20/3 s, 300 jobs",
                     round(per_window, 2), "images", f">= {target:g}, no 429 after 1st window",
                     per_window >= target and late_429 == 0,
                     f"{len(ok)} accepted in {span:.1f}s; whole windows {min(full)}..{max(full)}; "
                     f"429 after first window: {late_429}; per member "
                     f"{[sum(1 for _t, s in log if s == 200) for log in logs]}; "
                     f"{res['summary']['succeeded']} ok"))
    per_job = res["run_cpu"] / n
    rate = LIMIT / WINDOW * len(logs)
    busy = per_job * rate
    drivable = 1.0 / (per_job * HOSTED_RPM / 60.0)
    rows.append(_row("client CPU per job at full rate (3 members)", round(per_job * 1000, 2),
                     "ms", "-", None,
                     f"{res['run_cpu']:.2f}s for {n} jobs; {busy:.1%} of a core at "
                     f"{rate:g}/s; one core keeps up with ~{drivable:,.0f} members at the "
                     f"hosted {HOSTED_RPM:g}/min each"))


def bench_slow_member(rows: list[dict]) -> None:
    """One member answering 5x slower: the others are not held back by it."""
    n = 300
    res, logs = _measure("slow", n, 24, (0.1, 0.1, 0.5))
    # what three paced members can do at best: every start on schedule, the last one's
    # answer after the slow latency
    ideal = (n - len(logs)) / (LIMIT / WINDOW * len(logs)) + 0.5
    ratio = res["wall"] / ideal
    rows.append(_row("wall / ideal, one member at 5x latency (0.5 s vs 0.1 s)",
                     round(ratio, 3), "ratio", "<= 1.1", ratio <= 1.1,
                     f"wall {res['wall']:.1f}s, ideal {ideal:.1f}s; per member "
                     f"{[sum(1 for _t, s in log if s == 200) for log in logs]}; "
                     f"{res['summary']['succeeded']} ok"))


def bench_refused_member(rows: list[dict]) -> None:
    """One member's key refused 30 s in: the run finishes on the others, nothing paid twice."""
    n = 900
    res, logs = _measure("refused", n, 12, (0.05, 0.05, 0.05), revoke_after=(0.0, 0.0, 30.0))
    made = sum(1 for log in logs for _t, s in log if s == 200)
    refused = sum(1 for log in logs for _t, s in log if s == 401)
    throttled = sum(1 for log in logs for _t, s in log if s == 429)
    summary = res["summary"]
    dropped = summary["members"]["DIFFUSION3"]["dropped"] or ""
    ok = (summary["succeeded"] == n and made == n and throttled == 0
          and "DIFFUSION3_KEY" in dropped and refused <= 12)
    rows.append(_row("key refused after 30 s: images made / jobs", made / n, "ratio",
                     "1.0, refused <= in flight, no 429", ok,
                     f"{summary['succeeded']} ok of {n}; 200s {made} (none twice), 401s "
                     f"{refused} (those in flight), 429s {throttled}; wall {res['wall']:.1f}s; "
                     f"DIFFUSION3 made {summary['members']['DIFFUSION3']['images']}"))


def run() -> list[dict]:
    """Every pool figure, side by side in this one run."""
    rows = run_parts("pool", (bench_throughput, bench_slow_member, bench_refused_member))
    shutil.rmtree(WORK, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)

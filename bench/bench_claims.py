"""Claims on a shared cache, side by side in one run: two runs of one manifest started
together on one folder cache, with claims and without (the store told it cannot hold them,
as for one that ignores create-only puts). The image requests the embedded server received
say what claims save; the wall-time ratio of one run alone with and without claims says
what they cost."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from bench import row

JOBS = 40
CONCURRENCY = 4


def _plan(folder: Path):  # noqa: ANN202 - a Plan
    from imagebatch.planning.manifest import load_plan

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "claims.yaml"
    manifest.write_text(f"version: 1\nname: claims\njobs:\n  - id: a\n    prompt: a lighthouse\n"
                        f"    seeds: {{start: 1, count: {JOBS}}}\n", encoding="utf-8")
    return load_plan(str(manifest))


async def _runs(tmp: Path, runs: int) -> tuple[float, int, int]:
    """`runs` runs at once into their own outputs, one cache: (seconds, requests the server
    received, images made in the last run's folder)."""
    from imagebatch.providers import connect
    from imagebatch.running.options import RunOptions
    from imagebatch.running.run import run_plans
    from imagebatch.service.server import ServerOptions, running_server
    from imagebatch.storage.cache import open_cache

    plan = await asyncio.to_thread(_plan, tmp)
    share = tmp / "share"
    share.mkdir(exist_ok=True)
    # latency: each request takes as long as a short real one, so the runs overlap
    async with running_server(ServerOptions(key="bench-key", workers=2, latency_ms=40)) as srv:
        conn = connect.Connection("BENCH", srv.url, "bench-key")
        started = time.perf_counter()
        reports = await asyncio.gather(*(
            run_plans([plan], [conn], RunOptions(manifests=(), out=tmp / f"out{i}", post=False,
                                                 rpm=0, concurrency=CONCURRENCY),
                      io.StringIO(), env={}, cache=open_cache(str(share), {}))
            for i in range(runs)))
        seconds = time.perf_counter() - started
        return seconds, srv.stats.requests, reports[-1].plans[0].succeeded


def _measure(claims: bool, runs: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        if not claims:
            from imagebatch.storage.cache import Cache

            async def cannot(self: object, run: str) -> str:
                return "turned off for the benchmark"

            stack.enter_context(mock.patch.object(Cache, "conditional_puts", cannot))
        return asyncio.run(_runs(Path(tmp), runs))


def run() -> list[dict]:
    """Rows: requests two runs at once send with and without claims; one run's wall time
    with claims over without."""
    _s, with_claims, _ = _measure(True, 2)
    _s, without, _ = _measure(False, 2)
    alone = {c: min(_measure(c, 1)[0] for _ in range(2)) for c in (True, False)}
    ratio = alone[True] / alone[False]
    # what claims add to each image's wall time (a put, a listing, a delete on the cache),
    # against a real request of several seconds
    extra_ms = (alone[True] - alone[False]) / JOBS * 1000
    note = f"{JOBS} images, concurrency {CONCURRENCY} each, a folder cache, 40 ms a request"
    return [
        row("claims", "two runs at once: image requests with claims", with_claims, "requests",
            f"= {JOBS}", with_claims == JOBS, note),
        row("claims", "two runs at once: image requests without claims", without, "requests",
            "", None, "what every run paid before claims"),
        row("claims", "one run alone: with claims / without", round(ratio, 3), "x", "", None,
            f"{alone[True]:.2f} s against {alone[False]:.2f} s, best of 2; the fake answers in "
            "40 ms, where a real image takes seconds"),
        row("claims", "one run alone: wall time claims add per image", round(extra_ms, 1), "ms",
            "<= 100 (2% of a 5 s request)", extra_ms <= 100, note),
    ]


if __name__ == "__main__":
    for r in run():
        print(r)

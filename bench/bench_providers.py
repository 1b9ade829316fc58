"""The two providers side by side: the same manifest run once through Heroku's shape (JSON,
base64) and once through Stability's (a multipart form, raw image bytes) against one
embedded server, in this process, on one machine: the wall-time ratio says what Stability's
request and answer shape cost (or save) per image, rendering being the same work."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from pathlib import Path

from bench import row

JOBS = 48
CONCURRENCY = 4
ROUNDS = 2  # each provider runs this many times, alternating; the best of each is kept


def _plan(provider: str, jobs: int, out: Path):  # noqa: ANN202 - a Plan
    from imagebatch.planning.manifest import load_plan
    from imagebatch.providers import get

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "bench.yaml"
    manifest.write_text(f"version: 1\nname: bench\njobs:\n  - id: a\n    prompt: a lighthouse\n"
                        f"    seeds: {{start: 1, count: {jobs}}}\n", encoding="utf-8")
    return load_plan(str(manifest), providers=(get(provider),))


async def _run(provider: str, jobs: int, out: Path) -> tuple[float, int]:
    from imagebatch.providers import connect, get
    from imagebatch.running.options import RunOptions
    from imagebatch.running.run import run_plans
    from imagebatch.service.server import ServerOptions, running_server

    plan = await asyncio.to_thread(_plan, provider, jobs, out)
    async with running_server(ServerOptions(key="bench-key", workers=2)) as srv:
        conn = connect.Connection("BENCH", srv.url, "bench-key", provider=get(provider))
        opts = RunOptions(manifests=(), out=out / provider, post=False, rpm=0,
                          concurrency=CONCURRENCY)
        started = time.perf_counter()
        report = await run_plans([plan], [conn], opts, io.StringIO())
        seconds = time.perf_counter() - started
    return seconds, report.plans[0].succeeded


def run() -> list[dict]:
    """Rows: seconds per provider for JOBS images, and Stability's time over Heroku's."""
    best: dict[str, float] = {}
    made: dict[str, int] = {}
    for i in range(ROUNDS):
        for provider in ("heroku", "stability"):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, ok = asyncio.run(_run(provider, JOBS, Path(tmp) / str(i)))
            best[provider] = min(best.get(provider, seconds), seconds)
            made[provider] = ok
    ratio = best["stability"] / best["heroku"]
    note = f"{JOBS} images, concurrency {CONCURRENCY}, best of {ROUNDS}, one embedded server"
    return [
        row("providers", "heroku seconds", round(best["heroku"], 3), "s", note=note),
        row("providers", "stability seconds", round(best["stability"], 3), "s", note=note),
        row("providers", "stability / heroku wall time", round(ratio, 3), "x", "<= 1.25",
            ratio <= 1.25 and made["heroku"] == made["stability"] == JOBS,
            "the multipart form and raw bytes against JSON and base64, same renders"),
    ]


if __name__ == "__main__":
    for r in run():
        print(r)

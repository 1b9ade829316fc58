"""The runner's figures: scheduling efficiency, client CPU per job, memory, rate-limit use, resume.

The API server runs in its own process (a minimal stand-in with cached responses, so its
cost never limits the client); the measured client runs in another, through the same
`run_plans` that `imagebatch run` uses, and reports its own rusage.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bench import clean_rss, row, run_parts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "runner"

SERVER = r"""
import asyncio, base64, io, json, struct, sys, time, zlib, collections
from aiohttp import web
from PIL import Image
sys.path.insert(0, sys.argv[1])
from imagebatch.planning import apispec
latency, min_bytes = float(sys.argv[2]), int(sys.argv[3])
rpm, window = int(sys.argv[4]), float(sys.argv[5])
revoke = float(sys.argv[6])  # seconds after the first request the key is refused (0: never)
cache, stamps, log, first = {}, collections.deque(), [], []
def png(body):
    size = apispec.pixel_size(body); fmt = apispec.image_format(body)
    k = (size, fmt)
    if k not in cache:
        buf = io.BytesIO()
        Image.new("RGB", size, (90, 140, 200)).save(buf, format="JPEG" if fmt == "jpeg" else "PNG")
        data = buf.getvalue()
        if min_bytes > len(data) and fmt == "png":
            pad = bytes(range(256)) * (min_bytes // 256 + 1)
            chunk = (struct.pack(">I", len(pad)) + b"pdAt" + pad
                     + struct.pack(">I", zlib.crc32(b"pdAt" + pad)))
            data = data[:33] + chunk + data[33:]
        cache[k] = json.dumps({"created": int(time.time()), "data": [
            {"b64_json": base64.b64encode(data).decode(), "revised_prompt": ""}]}).encode()
    return cache[k]
async def gen(request):
    raw = await request.read()
    headers = {}
    first[:] = first or [time.monotonic()]
    if revoke and time.monotonic() - first[0] >= revoke:
        log.append((time.monotonic(), 401))
        return web.json_response({"error": {"code": 401, "message": "Invalid API key",
            "type": "authentication_error"}}, status=401)
    if rpm:
        now = time.monotonic()
        while stamps and stamps[0] <= now - window:
            stamps.popleft()
        if len(stamps) >= rpm:
            reset = stamps[0] + window - now
            log.append((now, 429))
            return web.json_response({"error": {"code": 429, "message": "Rate limit exceeded",
                "type": "rate_limit_error"}}, status=429, headers={
                "x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{reset:.3f}s",
                "Retry-After": str(max(1, round(reset)))})
        stamps.append(now)
        log.append((now, 200))
        headers = {"x-ratelimit-limit-requests": str(rpm),
                   "x-ratelimit-remaining-requests": str(rpm - len(stamps)),
                   "x-ratelimit-reset-requests": f"{stamps[0] + window - now:.3f}s"}
    else:
        log.append((time.monotonic(), 200))
    if latency:
        await asyncio.sleep(latency)
    return web.Response(body=png(json.loads(raw)), content_type="application/json", headers=headers)
async def stats(request):
    return web.json_response({"log": log})
async def main():
    app = web.Application(client_max_size=2**24)
    app.router.add_post(apispec.ENDPOINT, gen)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

CLIENT = r"""
import asyncio, io, json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from imagebatch.providers import connect
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.running.summary import plan_doc
from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key
out, n, conc, rpm = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
prefixes = sys.argv[6].split(",")
jobs = []
for i in range(n):
    body = {"model": "stable-image-ultra", "prompt": "a lighthouse at dusk", "aspect_ratio": "1:1",
            "output_format": "png", "seed": i + 1}
    jobs.append(Job(index=i, id="l", key=job_key(body), path=f"l/{i + 1}.png",
                    body=canonical_json(body), seed=i + 1, vars=(), label=""))
plan = Plan(name="bench", model="stable-image-ultra", source="bench.yaml", output=OutputSettings(),
            jobs=tuple(jobs), total=n)
del jobs
conns, _notes = connect.pool(os.environ, prefixes)
opts = RunOptions((), out=out, post=False, concurrency=conc, rpm=rpm)
started = time.perf_counter()
cpu_started = time.process_time()
report = asyncio.run(run_plans([plan], conns, opts, io.StringIO()))
summary = plan_doc(report.plans[0], members=report.members)
wall = time.perf_counter() - started
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "summary": summary, "cpu": ru.ru_utime + ru.ru_stime,
                  "run_cpu": time.process_time() - cpu_started, "maxrss_kb": ru.ru_maxrss}))
"""


class Server:
    """The stand-in API in its own process."""

    def __init__(self, latency: float = 0.0, min_bytes: int = 0, rpm: int = 0,
                 window: float = 60.0, revoke_after: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(ROOT), str(latency), str(min_bytes), str(rpm),
             str(window), str(revoke_after)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url + "/stats") as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def client(url: str | Mapping[str, str], out: Path, n: int, concurrency: int,
           rpm: float) -> dict:
    """Run the real runner in a fresh process, against one URL or a pool ({prefix: URL},
    each member with its own key); its own figures."""
    pool = {"DIFFUSION": url} if isinstance(url, str) else dict(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSION")}
    for prefix, member_url in pool.items():
        env.update({f"{prefix}_URL": member_url, f"{prefix}_KEY": f"inf-bench-{prefix}"})
    started = time.perf_counter()
    res = subprocess.run(clean_rss([sys.executable, "-c", CLIENT, str(ROOT), str(out), str(n),
                                    str(concurrency), str(rpm), ",".join(pool)]), env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    if res.returncode not in (0, 1):
        raise RuntimeError(res.stderr[-2000:])
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    doc["process_wall"] = time.perf_counter() - started
    return doc


def _fresh(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _row(metric: str, value: float, unit: str, target: str, ok: bool | None, note: str) -> dict:
    return row("runner", metric, value, unit, target, ok, note)


def sequential_per_request(url: str, k: int = 20) -> float:
    """The provider's quick start: requests.post in a loop, decode, write; seconds per image."""
    import base64

    import requests

    out = _fresh("sequential")
    started = time.perf_counter()
    for i in range(k):
        payload = {"model": "stable-image-ultra", "prompt": "a lighthouse", "seed": i + 1}
        r = requests.post(url + "/v1/images/generations", data=json.dumps(payload),
                          headers={"Authorization": "Bearer inf-bench"}, timeout=60)
        (out / f"{i}.png").write_bytes(base64.b64decode(r.json()["data"][0]["b64_json"]))
    return (time.perf_counter() - started) / k


def naive_gather(url: str, n: int, concurrency: int) -> float:
    """asyncio.gather of every request at once over one session (pool of `concurrency`)."""
    import asyncio
    import base64

    import aiohttp

    out = _fresh("gather")

    async def main() -> float:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def one(i: int) -> None:
                payload = {"model": "stable-image-ultra", "prompt": "a lighthouse", "seed": i + 1}
                async with session.post(url + "/v1/images/generations", json=payload) as r:
                    doc = await r.json()
                (out / f"{i}.png").write_bytes(base64.b64decode(doc["data"][0]["b64_json"]))

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - started

    return asyncio.run(main())


def bench_scheduling(rows: list[dict]) -> None:
    n, c, lat = 2000, 64, 0.2
    srv = Server(latency=lat)
    try:
        res = client(srv.url, _fresh("sched"), n, c, 0)
        ideal = math.ceil(n / c) * lat
        eff = ideal / res["wall"]
        rows.append(_row("scheduling efficiency, 2000 jobs, C=64, 200 ms", round(eff, 3), "ratio",
                         ">= 0.90", eff >= 0.90,
                         f"ideal {ideal:.1f}s, measured {res['wall']:.2f}s "
                         f"({res['summary']['succeeded']} ok)"))
        per = sequential_per_request(srv.url)
        rows.append(_row("sequential requests loop (quick start), 2000 jobs", round(per * n, 1),
                         "s", "-", None, f"measured on 20 requests, extrapolated x{n // 20}; "
                         f"runner is {per * n / res['wall']:.0f}x faster"))
        g = naive_gather(srv.url, n, c)
        rows.append(_row("naive asyncio.gather, 2000 jobs, pool 64", round(g, 2), "s", "-", None,
                         f"no checks, no retries, no atomic writes; runner/gather time "
                         f"{res['wall'] / g:.2f}"))
    finally:
        srv.close()


def bench_cpu(rows: list[dict]) -> None:
    n = 1000
    srv = Server(latency=0.0)
    try:
        res = client(srv.url, _fresh("cpu"), n, 8, 0)
        per = res["cpu"] / n * 1000
        rows.append(_row("client CPU per job (user+sys), zero-latency server", round(per, 2),
                         "ms", "-", None,
                         f"{n} jobs of 1024x1024 PNG, process total incl. startup "
                         f"{res['cpu']:.2f}s; wall {res['wall']:.1f}s"))
    finally:
        srv.close()


def bench_memory(rows: list[dict]) -> None:
    srv = Server(latency=0.0, min_bytes=1_100_000)
    try:
        small = client(srv.url, _fresh("mem1k"), 1000, 4, 0)
        shutil.rmtree(WORK / "mem1k", ignore_errors=True)
        big = client(srv.url, _fresh("mem5k"), 5000, 4, 0)
        shutil.rmtree(WORK / "mem5k", ignore_errors=True)
        ratio = big["maxrss_kb"] / small["maxrss_kb"]
        rows.append(_row("peak RSS 5000 jobs / 1000 jobs, payloads > 1 MB", round(ratio, 3),
                         "ratio", "<= 1.2", ratio <= 1.2,
                         f"{small['maxrss_kb'] / 1024:.0f} MB vs {big['maxrss_kb'] / 1024:.0f} MB; "
                         f"{big['summary']['succeeded']} ok"))
    finally:
        srv.close()


def bench_rate_limit(rows: list[dict]) -> None:
    limit, window, n = 20, 3.0, 100
    srv = Server(rpm=limit, window=window)
    try:
        res = client(srv.url, _fresh("rate"), n, 4, limit * 60 / window)
        log = srv.stats()["log"]
    finally:
        srv.close()
    ok_times = [t for t, s in log if s == 200]
    t0 = ok_times[0]
    late_429 = sum(1 for t, s in log if s == 429 and t > t0 + window)
    # Over the whole run the window admits `limit` per `window`: compare accepted starts
    # after the first full window with what the window would allow in that time.
    span = ok_times[-1] - t0
    achieved = (len(ok_times) - 1) / span if span > 0 else 0.0
    ratio = achieved / (limit / window)
    rows.append(_row("rate-limit use (20 per 3 s sliding window)", round(ratio, 3), "ratio",
                     ">= 0.95, no 429 after 1st window", ratio >= 0.95 and late_429 == 0,
                     f"{len(ok_times)} accepted in {span:.1f}s; 429 after first window: "
                     f"{late_429}; client --rpm {limit * 60 / window:g}; "
                     f"{res['summary']['succeeded']} ok"))


def bench_resume(rows: list[dict]) -> None:
    n = 10_000
    out = _fresh("resume")
    srv = Server(latency=0.0)
    try:
        client(srv.url, out, n, 32, 0)  # make them for real once
        res = client(srv.url, out, n, 32, 0)
    finally:
        srv.close()
    s = res["summary"]
    wall = res["process_wall"]
    rows.append(_row("resumed run of 10,000 finished jobs (whole process)", round(wall, 2), "s",
                     "< 3 s, 0 requests", wall < 3 and s["requests"] == 0,
                     f"requests {s['requests']}, skipped {s['skipped']}; "
                     f"{res['wall']:.2f}s inside the run"))
    shutil.rmtree(out, ignore_errors=True)


def run() -> list[dict]:
    """Every runner figure, side by side in this one run."""
    rows = run_parts("runner", (bench_scheduling, bench_cpu, bench_rate_limit, bench_resume,
                                bench_memory))
    shutil.rmtree(WORK, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)

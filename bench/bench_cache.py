"""Restoring a plan from the shared cache: `run` with an S3 cache that holds every image,
against the same objects fetched by obstore alone, in this one run.

N_IMAGES PNGs (request embedded, noise in part of each so they do not compress to nothing)
are put in a bucket of a local S3 endpoint (moto's server, in a process of its own). Then:

- obstore alone: list the objects and download them all, TRANSFERS at a time, keeping
  nothing (the floor: what the library and the endpoint cost);
- imagebatch: `run_plans` into an empty outputs folder with that cache: list, download,
  verify (SHA-256, decode, format and size, embedded request), write each image atomically
  and fsync it, record it in results.jsonl (fsynced) - against an image server that counts
  the requests it is sent (none is the target).

Best of REPEAT for each, alternated. No post-processing: that is the same with or without
a cache (bench_post measures it).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

from bench import row
from imagebatch.planning import config
from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key
from imagebatch.providers import connect
from imagebatch.running.cache import TRANSFERS
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.service.server import ServerOptions, running_server
from imagebatch.storage import metadata
from imagebatch.storage.cache import object_name, open_cache

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "cache"
N_IMAGES = 1000
REPEAT = 3
BUCKET = "bench-cache"


def _jobs() -> list[Job]:
    jobs = []
    for i in range(N_IMAGES):
        body = {"model": "stable-image-ultra", "prompt": f"bench {i}", "seed": i + 1,
                "aspect_ratio": "1:1", "output_format": "png"}
        jobs.append(Job(i, "bench", job_key(body), f"v{i // 100}/{i + 1}.png",
                        canonical_json(body), i + 1, (), f"#{i + 1}"))
    return jobs


def _png(seed: int) -> bytes:
    img = Image.new("RGB", (1024, 1024), (seed % 256, 90, 160))
    noise = Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3))
    img.paste(noise, (seed % 800, 100))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the S3 endpoint did not start")


async def _library_alone(store: object) -> tuple[float, int]:
    """Every object listed and downloaded by obstore, TRANSFERS at a time: (s, bytes)."""
    import obstore

    started = time.perf_counter()
    names = [m["path"] for chunk in obstore.list(store, "v1", chunk_size=1000)  # type: ignore[arg-type]
             for m in chunk]
    gate = asyncio.Semaphore(TRANSFERS)
    total = 0

    async def one(name: str) -> None:
        nonlocal total
        async with gate:
            got = await obstore.get_async(store, name)  # type: ignore[arg-type]
            data = await got.bytes_async()
            total += len(data)

    await asyncio.gather(*(one(n) for n in names))
    return time.perf_counter() - started, total


def run() -> list[dict]:
    """Rows: the library alone, imagebatch's restore, their ratio, requests sent."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, **env})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _wait(port)
        # the bucket (an S3 PUT to its name creates one); _measure fills it
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"),
                               timeout=30).close()
        return asyncio.run(_measure(endpoint, env))
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(WORK, ignore_errors=True)


async def _measure(endpoint: str, env: dict[str, str]) -> list[dict]:
    import obstore
    from obstore.store import S3Store

    setup = S3Store(BUCKET, endpoint=endpoint, region="us-east-1",
                    client_options={"allow_http": True})
    jobs = _jobs()
    plan = Plan(name="bench", model="stable-image-ultra", source="bench.yaml",
                output=OutputSettings(), jobs=tuple(jobs), total=len(jobs))
    async with running_server(ServerOptions(workers=1)) as srv:
        backend = config.backend_name(srv.url)
        total_bytes = 0
        for job in jobs:
            blob = metadata.embed(_png(job.seed), job.body)
            total_bytes += len(blob)
            await obstore.put_async(setup, object_name(job.key, backend,
                                                       hashlib.sha256(blob).hexdigest(),
                                                       "png"), blob)
        cache = open_cache(f"s3://{BUCKET}", env)
        await cache.check()
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key="bench")
        ours, alone = [], []
        restored = 0
        for attempt in range(REPEAT):
            seconds, got = await _library_alone(setup)
            assert got == total_bytes, (got, total_bytes)
            alone.append(seconds)
            out = WORK / f"out{attempt}"
            opts = RunOptions(manifests=(), out=out, post=False, rpm=0)
            started = time.perf_counter()
            report = await run_plans([plan], conn, opts, io.StringIO(), cache=cache)
            ours.append(time.perf_counter() - started)
            restored = report.plans[0].restored
            shutil.rmtree(out)
        requests = srv.stats.requests
    ratio = min(ours) / min(alone)
    mb = total_bytes / 1e6
    note = (f"{N_IMAGES} PNGs, {mb / N_IMAGES * 1000:.0f} kB each, moto S3 on 127.0.0.1, "
            f"{TRANSFERS} transfers at once, best of {REPEAT}")
    return [
        row("cache", "restore: obstore alone (list + get)", min(alone), "s", note=note),
        row("cache", "restore: imagebatch run (verify + save)", min(ours), "s",
            note=f"{restored} restored; {N_IMAGES / min(ours):.0f} images/s"),
        row("cache", "restore: imagebatch / obstore alone", ratio, "x", "<= 1.2x",
            ratio <= 1.2),
        row("cache", "restore: requests to the image API", requests, "requests", "0",
            requests == 0 and restored == N_IMAGES),
    ]

"""What a resume's done check costs: size and mtime compared (the default) against every
image hashed (`--verify`), on the same folder in this one run.

The folder holds N_JOBS recorded PNGs of about IMAGE_BYTES each (noise, so they do not
compress), written by Store.save as a run writes them, into bench/.work/resume. The page
cache is warm for both (the folder was just written), so the hashed figure is the CPU's
SHA-256 rate, the best case; a cold disk adds its read time on top.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

from PIL import Image

from bench import row
from imagebatch.planning.plan import Job, canonical_json, job_key
from imagebatch.storage.store import Store, job_states

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "resume"
N_JOBS = 2000
IMAGE_BYTES = 1_500_000  # about a 1024x1024 PNG from the service


def _png() -> bytes:
    side = int((IMAGE_BYTES / 3) ** 0.5)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jobs() -> list[Job]:
    jobs = []
    for i in range(N_JOBS):
        body = {"model": "m", "prompt": f"bench {i}", "seed": i + 1}
        jobs.append(Job(i, "bench", job_key(body), f"v{i // 100}/{i + 1}.png",
                        canonical_json(body), i + 1, (), f"#{i + 1}"))
    return jobs


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def run() -> list[dict]:
    """Rows: cheap check, verify, their ratio, and the check of a touched folder."""
    shutil.rmtree(WORK, ignore_errors=True)
    jobs = _jobs()
    store = Store(WORK, "bench", "local")
    store.prepare()
    store.load()
    png = _png()
    for job in jobs:
        store.save(job, png, attempts=1, seconds=0, created=0)
    store.close()
    root = WORK / "bench"
    try:
        cheap = _best(lambda: job_states(jobs, root, "local"))
        verify = _best(lambda: job_states(jobs, root, "local", verify=True))
        assert all(s.state == "done" for s in job_states(jobs, root, "local", verify=True))
        later = time.time_ns() + 10**9
        for job in jobs:  # every image touched: the next check hashes them all, once
            os.utime(root / "images" / job.path, ns=(later, later))
        touched = job_states(jobs, root, "local")
        assert all(s.state == "done" and s.hashed for s in touched)
        mb = N_JOBS * len(png) / 1e6
        note = f"{N_JOBS} jobs, {len(png) / 1e6:.1f} MB each, warm page cache"
        return [
            row("resume", "done check (size + mtime)", cheap * 1e6 / N_JOBS, "µs/job",
                note=note),
            row("resume", "done check --verify (SHA-256)", verify * 1e6 / N_JOBS, "µs/job",
                note=f"{mb / verify:.0f} MB/s hashed"),
            row("resume", "--verify / default", verify / cheap, "x",
                "default at least 10x cheaper", verify / cheap >= 10),
        ]
    finally:
        shutil.rmtree(WORK, ignore_errors=True)

"""Shared builders for the runner's tests: jobs, plans and images made in memory."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key

KEY = "inf-SECRETSECRET123"  # distinctive, so a scan for it cannot miss


def make_job(index: int = 0, *, prompt: str = "a fox", fmt: str = "png", seed: int = 1,
             size: str | None = None, job_id: str = "fox") -> Job:
    """A Job built by hand, as the planner would."""
    body: dict = {"model": "stable-image-ultra", "prompt": prompt, "output_format": fmt,
                  "seed": seed}
    if size:
        body["size"] = size
    else:
        body["aspect_ratio"] = "1:1"
    ext = "jpg" if fmt == "jpeg" else "png"
    return Job(index=index, id=job_id, key=job_key(body), path=f"{job_id}/{seed}.{ext}",
               body=canonical_json(body), seed=seed, vars=(), label=f"{job_id} #{seed}")


def make_plan(n: int = 3, *, name: str = "demo", prompt: str = "a fox", **kw) -> Plan:
    """A Plan of `n` jobs (seeds 1..n)."""
    jobs = tuple(make_job(i, prompt=prompt, seed=i + 1, **kw) for i in range(n))
    return Plan(name=name, model="stable-image-ultra", source=f"{name}.yaml",
                output=OutputSettings(), jobs=jobs, total=n)


def image_bytes(fmt: str = "png", size: tuple[int, int] = (1024, 1024),
                color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """An encoded image of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG" if fmt == "jpeg" else "PNG")
    return buf.getvalue()


class Clock:
    """Time that passes only when the code under test sleeps: a clock and its sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)

""""More like this": the manifest snippet of a variations job of one image. Pure; writes nothing.

The manifest stays the one source of truth: the review page shows (and copies) this text,
and the user pastes it under `jobs:`. The job takes the picked image as its input (`image:`,
relative to the manifest, so the manifest still loads from where it is) with a `strength`,
and the request fields that made the image, so the variations stay near it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..planning.plan import Job, safe

DEFAULT_STRENGTH = 0.35  # near the picked image: its composition kept, its details varied
DEFAULT_COUNT = 4  # variations asked for: {random: 4}
#: Request fields carried over from the picked image (the image replaces its size and ratio).
_CARRIED = ("prompt", "negative_prompt", "output_format")


def variation_id(job: Job) -> str:
    """The snippet's job id: the picked job's id, seed and variables, then `-more`."""
    parts = [job.id, *(v for _, v in job.vars), str(job.seed), "more"]
    return safe("-".join(p for p in parts if p))[:100]


def variation_job(job: Job, image: Path, manifest: str | Path, *,
                  strength: float = DEFAULT_STRENGTH, count: int = DEFAULT_COUNT
                  ) -> dict[str, Any]:
    """The manifest job (as a mapping) that makes `count` variations of `job`'s image, the
    file `image`; its `image:` is written relative to the manifest's folder."""
    request = job.request
    rel = os.path.relpath(Path(image).resolve(), Path(manifest).resolve().parent)
    out: dict[str, Any] = {"id": variation_id(job)}
    for name in _CARRIED:
        if request.get(name):
            out[name] = request[name]
    out["image"] = Path(rel).as_posix()
    out["strength"] = strength
    out["seeds"] = {"random": count}
    return out


def variation_snippet(job: Job, image: Path, manifest: str | Path, *,
                      strength: float = DEFAULT_STRENGTH, count: int = DEFAULT_COUNT) -> str:
    """The YAML to paste under `jobs:` (indented as a list item there), with a comment
    naming the image it varies and what it needs to run."""
    doc = variation_job(job, image, manifest, strength=strength, count=count)
    text = yaml.safe_dump([doc], sort_keys=False, allow_unicode=True, width=100)
    body = "".join(f"  {line}\n" for line in text.splitlines())
    return (f"  # more like {job.path} (image-to-image: needs a stability backend; "
            f"strength 0 keeps the image, 1 ignores it)\n{body}")

""""More like this": the manifest snippet of a variations job of one image, and its input.

The manifest stays the one source of truth: the review page shows (and copies) this text,
and the user pastes it under `jobs:`. The job takes the picked image as its input (`image:`,
relative to the manifest) with a `strength`, and the request fields that made the image,
so the variations stay near it.

The input is a copy of the picked image beside the manifest, `inputs/<manifest
name>/<job>-<variables>-<seed>.<ext>`, a file the user commits with the manifest: the
images under `outputs/` are not committed (the folder is ignored), so a snippet naming
one would fail on any other machine, CI included. A copy is written once and never
replaced by other bytes: a manifest may already use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ImagebatchError
from ..planning.plan import Job, safe
from ..storage.store import atomic_write

DEFAULT_STRENGTH = 0.35  # near the picked image: its composition kept, its details varied
DEFAULT_COUNT = 4  # variations asked for: {random: 4}
#: Request fields carried over from the picked image (the image replaces its size and ratio).
_CARRIED = ("prompt", "negative_prompt", "output_format")


def variation_id(job: Job) -> str:
    """The snippet's job id: the picked job's id, seed and variables, then `-more`."""
    parts = [job.id, *(v for _, v in job.vars), str(job.seed), "more"]
    return safe("-".join(p for p in parts if p))[:100]


#: The folder beside the manifest that holds the inputs of image-to-image jobs.
INPUTS = "inputs"


class InputExists(ImagebatchError):
    """The input's file is already there, holding another picture: it is not replaced."""


def input_path(job: Job, manifest: str | Path, name: str) -> Path:
    """Where the copy of `job`'s image goes: inputs/<name>/<id>-<vars>-<seed>.<ext> in the
    folder of `manifest` (whose plan is called `name`)."""
    stem = safe("-".join(p for p in (job.id, *(v for _, v in job.vars), str(job.seed)) if p))
    return Path(manifest).parent / INPUTS / safe(name) / f"{stem[:120]}.{job.ext}"


def save_input(data: bytes, dest: Path) -> bool:
    """Write `data` (the picked image's bytes) at `dest`; False when it holds them already.

    InputExists when `dest` holds other bytes: a manifest may use that file (its SHA-256 is
    in its jobs' keys), so it is never overwritten. The copy is written beside `dest` and
    linked into place, so `dest` is either absent or whole, and a file that appears there
    meanwhile is not replaced either. OSError when the folder cannot be written.
    """

    def same() -> bool:
        try:
            held = dest.read_bytes()
        except FileNotFoundError:
            return False
        if held != data:
            raise InputExists(f"{dest} already exists and holds another picture; rename or "
                              "delete it to save this one there")
        return True

    if same():
        return False
    try:
        atomic_write(dest, data, create_only=True)
    except FileExistsError:  # written meanwhile: fine if it is this picture
        if same():
            return False
        raise
    return True


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

"""Outputs on disk for the review page's tests: a manifest, its images, results.jsonl."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imagebatch.assets.review import Review, RunningReview, running_review
from imagebatch.pictures.post import build_all
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import Plan
from imagebatch.planning.promptlock import Brief, Entry, lock_name, render_lock
from imagebatch.storage.store import Store

HOSTILE = "<img src=x onerror=alert(1)>"

#: Three seeds of one prompt (a row of seeds) and a 2 x 2 matrix (rows by style, columns by
#: subject); the fox's prompt is hostile HTML, to be shown as text.
MANIFEST = f"""\
version: 1
name: rv
jobs:
  - id: fox
    prompt: "{HOSTILE} a red fox in snow"
    negative_prompt: "blurry, <b>bold</b>"
    aspect_ratio: "3:2"
    seeds: [1, 2, 3]
  - id: toys
    prompt: "a {{subject}} in the style of {{style}}"
    aspect_ratio: "1:1"
    seeds: [7]
    matrix:
      style: [clay, paper]
      subject: [boat, kite]
"""


#: A seed sweep beside a job whose prompts were written from a brief (with the same seeds:
#: they must not share one header), the brief hostile HTML; write_lock writes its lock.
BRIEF = "a small robot gardener among <b>tall</b> sunflowers & tomato vines"
BRIEFED = f"""\
version: 1
name: rv
defaults:
  aspect_ratio: "1:1"
jobs:
  - id: fox
    prompt: "a red fox in snow"
    seeds: [1, 2]
  - id: robots
    prompts: {{brief: "{BRIEF}", count: 2}}
    seeds: [1, 2]
"""


def write_lock(manifest: Path, job_id: str, brief: str, prompts: Sequence[str]) -> Path:
    """The prompts lock beside `manifest` holding `prompts` for `job_id`'s brief, as
    `imagebatch expand` writes it (a brief of len(prompts), no vary or keep)."""
    digest = Brief(job_id, brief, len(prompts)).digest
    entry = Entry(job_id, brief, digest, "test-model", "2030-01-01T00:00:00Z", tuple(prompts))
    lock = manifest.with_name(lock_name(str(manifest)))
    lock.write_text(render_lock(str(manifest), [entry]), encoding="utf-8")
    return lock


@dataclass
class Outputs:
    """A manifest with its outputs made on disk."""

    manifest: Path
    out: Path
    plan: Plan

    @property
    def root(self) -> Path:
        """outputs/<name>."""
        return self.out / self.plan.name

    @property
    def picks_file(self) -> Path:
        """The picks file beside the manifest."""
        return self.manifest.with_name(self.manifest.stem + ".picks.json")

    def review(self) -> Review:
        """A Review of these outputs (not yet serving)."""
        return Review(plan=self.plan, root=self.root, picks_file=self.picks_file,
                      manifest=str(self.manifest))


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A PNG with a gradient, so it has detail to see."""
    img = Image.new("RGB", size, colour)
    px = img.load()
    for x in range(0, size[0], 4):
        for y in range(0, size[1], 4):
            px[x, y] = ((colour[0] + x) % 256, (colour[1] + y) % 256, colour[2])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_outputs(tmp_path: Path, text: str = MANIFEST, *, skip: Iterable[int] = (),
                 fail: Iterable[int] = (), post: bool = True) -> Outputs:
    """Write the manifest, save an image for each job (but `skip`/`fail`), post-process."""
    manifest = tmp_path / "rv.yaml"
    manifest.write_text(text)
    plan = load_plan(str(manifest))
    out = tmp_path / "outputs"
    store = Store(out, plan.name, "local")
    store.prepare()
    skip, fail = set(skip), set(fail)
    for i, job in enumerate(plan.jobs):
        if i in skip:
            continue
        if i in fail:
            store.fail(job, "refused by the service", attempts=1, seconds=0)
            continue
        size = (240, 160) if job.request.get("aspect_ratio") == "3:2" else (160, 160)
        store.save(job, png(size, (40 + 50 * i % 200, 90, 160)), attempts=1, seconds=0,
                   created=0)
    store.close()
    if post:
        build_all(plan, store.root, workers=1)
    return Outputs(manifest, out, plan)


@contextlib.asynccontextmanager
async def serving(outputs: Outputs, host: str = "127.0.0.1") -> AsyncIterator[RunningReview]:
    """The review server of `outputs` on a free port."""
    async with running_review(outputs.review(), host, 0) as srv:
        yield srv

"""A job whose prompts were written from a brief: the brief heads its group on the contact
sheet, in index.html and on the review page (real images, made by the embedded server)."""

from __future__ import annotations

import asyncio
import dataclasses
import html.parser
import io
import shutil
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from runner_helpers import KEY

from imagebatch.assets.review import Review, render_page
from imagebatch.commands.expand import expand
from imagebatch.pictures import fonts, imaging
from imagebatch.pictures.post import build_all
from imagebatch.pictures.report import anchor
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import Plan
from imagebatch.providers import connect
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.service.server import ServerOptions, running_server

# fox and robots have the same seeds: without the brief they would share one header block;
# moon and lone are jobs of one image each, which would be one loose group
MANIFEST = """
    version: 1
    name: briefs
    defaults:
      aspect_ratio: "1:1"
    output:
      thumbnail: 64
    jobs:
      - id: fox
        prompt: "a fox in the snow"
        seeds: [1, 2]
      - id: robots
        prompts: {brief: "BRIEF", count: 2}
        seeds: [1, 2]
      - id: moon
        prompt: "a full moon"
        seeds: [3]
      - id: lone
        prompts: {brief: "one quiet lighthouse", count: 1}
        seeds: [4]
"""
HOSTILE = "a robot gardener among <b>tall</b> sunflowers & vines"
LONG = ("a small robot gardener at work in a walled kitchen garden, drawn as a mid-century "
        "children's book illustration with soft paper texture, a limited palette of teal, "
        "mustard and brick red, gentle morning light falling across the beds, bees, "
        "watering cans, and a cat asleep on the warm brick wall; the END of it")
INK = 128  # a channel darker than this is text (the sheet is white, its text near black)


async def _make(folder: Path) -> Plan:
    manifest = folder / "m.yaml"
    manifest.write_text(textwrap.dedent(MANIFEST.replace("BRIEF", HOSTILE)).lstrip("\n"),
                        encoding="utf-8")
    await asyncio.to_thread(expand, str(manifest), env={}, out=io.StringIO(),
                            err=io.StringIO())  # the embedded chat model writes the prompts
    plan = load_plan(str(manifest))
    async with running_server(ServerOptions(flat=True)) as srv:
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        report = await run_plans([plan], conn, RunOptions(manifests=(), out=folder / "out", rpm=0),
                                 io.StringIO())
        assert srv.stats.requests == 8  # every image made, once, by the server
    assert report.succeeded == 8 and report.failed == 0
    return plan


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, Path]:
    """The manifest (brief HOSTILE), expanded and run offline with post-processing, once for
    the module: its plan and output folder (a test that writes there copies it first)."""
    folder = tmp_path_factory.mktemp("briefs")
    plan = asyncio.run(_make(folder))
    return plan, folder / "out" / plan.name


def copied(made: tuple[Plan, Path], tmp_path: Path) -> Path:
    """A copy of the module's output folder, for a test to write in."""
    return Path(shutil.copytree(made[1], tmp_path / made[0].name))


def has_ink(sheet: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Whether any pixel of `box` on the sheet is text-dark."""
    lo, _ = zip(*sheet.crop(box).getextrema(), strict=True)
    return min(lo) < INK


def test_the_plan_carries_each_jobs_brief(made: tuple[Plan, Path]) -> None:
    plan, _ = made
    assert plan.briefs == (("robots", HOSTILE), ("lone", "one quiet lighthouse"))


def test_the_sheet_heads_the_job_with_its_brief(made: tuple[Plan, Path], tmp_path: Path
                                                ) -> None:
    plan, _ = made
    root = copied(made, tmp_path)
    (page,) = build_all(plan, root, workers=1).pages  # the sheet the run drew, drawn again
    with Image.open(root / "contact-sheet.png") as im:
        sheet = im.convert("RGB")
    assert sheet.size == page.size
    briefs = [lb for lb in page.labels if lb.kind == "brief"]
    assert [lb.text for lb in briefs] == [f"robots — brief: {HOSTILE}",
                                          "lone — brief: one quiet lighthouse"]
    heading = briefs[0].box
    fox = [c.box for c in page.cells if c.entry.job.id == "fox"]
    robots = [c.box for c in page.cells if c.entry.job.id == "robots"]
    # between the two sweeps, each under its own seed headers
    columns = [lb.box for lb in page.labels if lb.kind == "column"]
    assert [lb.text for lb in page.labels if lb.kind == "column"] == ["#1", "#2"] * 2
    assert max(b[3] for b in fox) <= heading[1] < heading[3] <= columns[2][1]
    assert columns[2][3] <= min(b[1] for b in robots)
    # drawn: text in its box, and above it, between the sweeps, nothing
    assert has_ink(sheet, heading)
    assert not has_ink(sheet, (0, max(b[3] for b in fox), sheet.width, heading[1]))
    # the lone image is a group of its own, under its brief, apart from the moon's
    lone = next(c for c in page.cells if c.entry.job.id == "lone")
    moon = next(c for c in page.cells if c.entry.job.id == "moon")
    assert moon.caption[3] <= briefs[1].box[1] < briefs[1].box[3] <= lone.box[1]
    assert has_ink(sheet, briefs[1].box)


def test_a_long_brief_is_cut_to_fit_the_sheet(made: tuple[Plan, Path], tmp_path: Path
                                              ) -> None:
    plan = dataclasses.replace(made[0], briefs=(("robots", LONG),))
    root = copied(made, tmp_path)
    (page,) = build_all(plan, root, workers=1).pages
    with Image.open(root / "contact-sheet.png") as im:
        sheet = im.convert("RGB")
    label = next(lb for lb in page.labels if lb.kind == "brief")
    left, top, right, bottom = label.box
    assert label.text == f"robots — brief: {LONG}"  # whole in the layout, cut when drawn
    lines = imaging.wrap(label.text, right - left, imaging.HEADER_SIZE, imaging.BRIEF_LINES)
    assert len(lines) == 2 and lines[-1].endswith("…") and "END" not in "".join(lines)
    assert right <= sheet.width - imaging.MARGIN
    # what is drawn there is exactly those two lines, and nothing past the box's edge or
    # under it before the job's column headers
    lh = (bottom - top) // 2
    expected = Image.new("RGB", (right - left, bottom - top), imaging.BACKGROUND)
    for k, line in enumerate(lines):
        fonts.draw_text(expected, (0, k * lh), line, imaging.HEADER_SIZE, imaging.TEXT)
    assert sheet.crop(label.box).tobytes() == expected.tobytes()
    assert has_ink(sheet, label.box)
    assert not has_ink(sheet, (right, top, sheet.width, bottom))
    headers = min(lb.box[1] for lb in page.labels if lb.kind == "column" and lb.box[1] > top)
    assert not has_ink(sheet, (0, bottom, sheet.width, headers))


class _Tree(html.parser.HTMLParser):
    """Each `section` with its id and class, the text of the `.brief` in it, the tags
    inside that brief, and the images (data-cell or data-path) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.depth = 0  # inside the current section's .brief: its nesting
        self.open = 0  # sections open

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.open += 1
            self.sections.append({"id": a.get("id"), "class": a.get("class") or "",
                                  "brief": "", "inside": [], "cells": []})
        elif not self.sections or not self.open:
            return
        sec = self.sections[-1]
        if self.depth:
            self.depth += 1
            sec["inside"].append(tag)
        elif "brief" in (a.get("class") or "").split():
            self.depth = 1
        if a.get("data-cell") or (tag == "figure" and a.get("data-path")):
            sec["cells"].append(a.get("data-cell") or a["data-path"])

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1
        if tag == "section":
            self.open -= 1

    def handle_data(self, data):
        if self.depth and self.sections:
            self.sections[-1]["brief"] += data


def _sections(doc: str, kind: str) -> list[dict]:
    tree = _Tree()
    tree.feed(doc)
    return [s for s in tree.sections if kind in s["class"].split()]


def test_index_shows_the_whole_brief_under_the_jobs_heading(made: tuple[Plan, Path]) -> None:
    _, root = made
    doc = (root / "index.html").read_text(encoding="utf-8")
    sections = {s["id"]: s for s in _sections(doc, "job")}
    robots = sections[anchor("robots")]
    assert " ".join(robots["brief"].split()) == f"Brief: {HOSTILE}"
    assert robots["inside"] == ["span"]  # its <b> is text, not markup
    assert "&lt;b&gt;tall&lt;/b&gt; sunflowers &amp; vines" in doc
    assert " ".join(sections[anchor("lone")]["brief"].split()) == "Brief: one quiet lighthouse"
    assert sections[anchor("fox")]["brief"] == sections[anchor("moon")]["brief"] == ""
    # the brief sits right under the section's heading, before its grid
    head = doc.index(f'id="{anchor("robots")}"')
    assert doc.index("</h2>", head) < doc.index('class="brief"', head) \
        < doc.index('class="matrix"', head)


def test_review_page_heads_the_group_with_its_brief(made: tuple[Plan, Path], tmp_path: Path
                                                    ) -> None:
    plan, root = made
    review = Review(plan=plan, root=root, picks_file=tmp_path / "m.picks.json",
                    manifest=str(tmp_path / "m.yaml"))
    doc = render_page(review)
    groups = [(" ".join(s["brief"].split()), s["inside"], s["cells"])
              for s in _sections(doc, "block")]
    paths = {job: [j.path for j in plan.jobs if j.id == job]
             for job in ("fox", "robots", "moon", "lone")}
    assert groups == [
        ("", [], paths["fox"]),
        (f"robots brief: {HOSTILE}", ["b", "span"], paths["robots"]),
        ("", [], paths["moon"]),
        ("lone brief: one quiet lighthouse", ["b", "span"], paths["lone"]),
    ]
    assert "&lt;b&gt;tall&lt;/b&gt;" in doc
    # a manifest without briefs: no heading, the groups as before
    bare = Review(plan=dataclasses.replace(plan, briefs=()), root=root,
                  picks_file=tmp_path / "m.picks.json", manifest=str(tmp_path / "m.yaml"))
    assert [s["brief"] for s in _sections(render_page(bare), "block")] == ["", ""]

"""build_all over disk: thumbnails (only when needed), contact sheets, index.html."""

from __future__ import annotations

import errno
import hashlib
import html
import html.parser
import io
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from imagebatch.errors import StoreError
from imagebatch.pictures import imaging
from imagebatch.pictures.post import build_all, thumb_rel
from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key
from imagebatch.storage.store import Store


def colour(i: int) -> tuple[int, int, int]:
    return ((53 * i + 30) % 256, (97 * i + 80) % 256, (151 * i + 200) % 256)


def make_plan(variants: int = 2, seeds: int = 3, *, fmt: str = "png", thumbnail: int = 64,
              per_page: int = 100, name: str = "sweep", prompt: str = "a fox",
              ratio: str = "1:1") -> Plan:
    jobs = []
    for v in range(variants):
        for s in range(seeds):
            style = f"style {v}"
            body = {"model": "m", "prompt": f"{prompt} in {style}", "aspect_ratio": ratio,
                    "output_format": fmt, "seed": 10 + s}
            ext = "jpg" if fmt == "jpeg" else "png"
            jobs.append(Job(len(jobs), "fox", job_key(body), f"fox/style-{v}/{10 + s}.{ext}",
                            canonical_json(body), 10 + s, (("style", style),),
                            f"fox {style} #{10 + s}"))
    out = OutputSettings(thumbnail=thumbnail, per_page=per_page)
    return Plan(name, "m", f"{name}.yaml", out, tuple(jobs), len(jobs))


def encode(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if ext == "jpg" else "PNG", quality=95)
    return buf.getvalue()


def run_jobs(tmp_path: Path, plan: Plan, *, fail: set[int] = frozenset(),
             skip: set[int] = frozenset(), size: tuple[int, int] = (256, 256),
             mode: str = "RGB") -> Path:
    """Write each job's image (one colour per job) and its record, as a run would."""
    store = Store(tmp_path / "out", plan.name, "local")
    store.prepare()
    store.load()
    for job in plan.jobs:
        if job.index in skip:
            continue
        if job.index in fail:
            store.fail(job, f"HTTP 400: job {job.index} refused", attempts=1, seconds=0)
            continue
        img = Image.new(mode, size, colour(job.index) + ((255,) if mode == "RGBA" else ()))
        store.save(job, encode(img, job.ext), attempts=1, seconds=0, created=0)
    store.close()
    return store.root


def resave(root: Path, plan: Plan, job: Job, img: Image.Image) -> Path:
    """A new image for `job`, written and recorded as a run would; its path."""
    store = Store(root.parent, plan.name, "local")
    store.prepare()
    store.load()
    store.save(job, encode(img, job.ext), attempts=1, seconds=0, created=0)
    store.close()
    return root / "images" / job.path


def check_cells(result, root: Path, *, tol: int = 8) -> None:
    """Every ok cell's centre shows its job's colour; others do not."""
    assert result.pages
    for page, path in zip(result.pages, result.sheets, strict=True):
        with Image.open(path) as sheet:
            assert sheet.size == page.size and sheet.mode == "RGB"
            for cell in page.cells:
                c = ((cell.box[0] + cell.box[2]) // 2, (cell.box[1] + cell.box[3]) // 2)
                px = sheet.getpixel(c)
                want = colour(cell.entry.job.index)
                near = all(abs(a - b) <= tol for a, b in zip(px, want, strict=True))
                assert near == (cell.entry.state == imaging.OK), (cell.entry, px, want)


def test_builds_thumbs_sheet_and_index(tmp_path):
    plan = make_plan(2, 3)
    root = run_jobs(tmp_path, plan, size=(256, 128))
    result = build_all(plan, root, workers=1)
    assert result.thumbs_made == 6 and result.thumbs_kept == 0 and result.missing == 0
    for job in plan.jobs:  # thumbs/ mirrors images/, each thumbnail named <stem>.jpg
        assert job.path.endswith(".png")
        with Image.open(root / "thumbs" / f"{job.path.removesuffix('.png')}.jpg") as t:
            assert t.format == "JPEG" and t.mode == "RGB" and t.size == (64, 32)
            px = t.getpixel((32, 16))
            assert all(abs(a - b) <= 8 for a, b in zip(px, colour(job.index), strict=True))
    assert result.sheets == (root / "contact-sheet.png",)
    assert result.index == root / "index.html" and result.index.is_file()
    check_cells(result, root)
    (page,) = result.pages
    assert [lb.text for lb in page.labels if lb.kind == "column"] == ["#10", "#11", "#12"]
    assert page.title == "sweep — 6 images"
    assert not list(root.rglob(".tmp-*"))


def test_failed_and_missing_jobs_are_marked_and_the_grid_stays(tmp_path):
    plan = make_plan(3, 3)
    whole = build_all(plan, run_jobs(tmp_path / "a", plan), workers=1)
    root = run_jobs(tmp_path / "b", plan, fail={4}, skip={6})
    result = build_all(plan, root, workers=1)
    assert result.missing == 2 and result.thumbs_made == 7
    assert [c.box for c in result.pages[0].cells] == [c.box for c in whole.pages[0].cells]
    states = {c.entry.job.index: c.entry.state for c in result.pages[0].cells}
    assert states[4] == "failed" and states[6] == "missing"
    check_cells(result, root)
    with Image.open(result.sheets[0]) as sheet:
        cell = next(c for c in result.pages[0].cells if c.entry.job.index == 4)
        data = sheet.crop(cell.box).tobytes()
        reds = sum(1 for i in range(0, len(data), 3) if data[i] > data[i + 1] + 20)
        assert reds > len(data) // 6
    assert "(1 failed, 1 missing)" in result.pages[0].title


def test_cells_show_the_done_state_not_the_last_record(tmp_path):
    plan = make_plan(1, 3)
    root = run_jobs(tmp_path, plan)
    store = Store(tmp_path / "out", plan.name, "local")
    store.prepare()
    # a --force attempt that failed leaves the image it would have replaced: still done
    store.fail(plan.jobs[0], "later failure", attempts=1, seconds=0)
    # a failure after an image that is gone since: failed, with that reason
    store.fail(plan.jobs[1], "later failure", attempts=1, seconds=0)
    store.close()
    (root / "images" / plan.jobs[1].path).unlink()
    result = build_all(plan, root, backend="local", workers=1)
    states = {c.entry.job.index: (c.entry.state, c.entry.reason) for c in result.pages[0].cells}
    assert states == {0: ("ok", None), 1: ("failed", "later failure"), 2: ("ok", None)}
    # for another backend none of these is done, and that backend failed none of them
    other = build_all(plan, root, backend="https://api.example.test", workers=1)
    assert {c.entry.state for c in other.pages[0].cells} == {"missing"}


def test_thumbs_rebuilt_only_for_changed_images(tmp_path):
    plan = make_plan(2, 3)
    root = run_jobs(tmp_path, plan)
    assert build_all(plan, root, workers=1).thumbs_made == 6
    thumbs = {j.index: root / thumb_rel(j.path) for j in plan.jobs}
    before = {i: p.stat().st_mtime_ns for i, p in thumbs.items()}
    image = resave(root, plan, plan.jobs[2], Image.new("RGB", (256, 256), (250, 250, 0)))
    later = before[2] + 5_000_000_000
    os.utime(image, ns=(later, later))
    again = build_all(plan, root, workers=1)
    assert (again.thumbs_made, again.thumbs_kept) == (1, 5)
    after = {i: p.stat().st_mtime_ns for i, p in thumbs.items()}
    assert [i for i in after if after[i] != before[i]] == [2]
    with Image.open(thumbs[2]) as t:
        assert all(abs(a - b) <= 8
                   for a, b in zip(t.getpixel((32, 32)), (250, 250, 0), strict=True))
    # An image replaced by an older file (a restored copy) is seen too.
    image = resave(root, plan, plan.jobs[3], Image.new("RGB", (256, 256), (0, 250, 250)))
    os.utime(image, ns=(before[3] - 10**9, before[3] - 10**9))
    assert build_all(plan, root, workers=1).thumbs_made == 1
    with Image.open(thumbs[3]) as t:
        assert all(abs(a - b) <= 8
                   for a, b in zip(t.getpixel((32, 32)), (0, 250, 250), strict=True))
    # A deleted thumbnail is made again; a new size remakes them all.
    thumbs[0].unlink()
    assert build_all(plan, root, workers=1).thumbs_made == 1
    bigger = make_plan(2, 3, thumbnail=96)
    res = build_all(bigger, root, workers=1)
    assert res.thumbs_made == 6
    with Image.open(thumbs[1]) as t:
        assert t.size == (96, 96)


def test_an_old_named_thumbnail_is_swept_and_never_shown(tmp_path):
    # Thumbnails were once named thumbs/<image path>.jpg (fox/style-0/10.png.jpg). One left
    # from then, even with its image's date, is never shown for the image: it is removed.
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    job = plan.jobs[0]
    old = root / "thumbs" / f"{job.path}.jpg"
    old.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (255, 0, 255)).save(old, format="JPEG")
    mtime = (root / "images" / job.path).stat().st_mtime_ns
    os.utime(old, ns=(mtime, mtime))
    result = build_all(plan, root, workers=1)
    assert result.thumbs_made == 2 and not old.exists()
    assert thumb_rel(job.path) == "thumbs/fox/style-0/10.jpg"
    check_cells(result, root)  # each cell shows its own image's colour
    assert f'src="{thumb_rel(job.path)}"' in result.index.read_text()
    assert sorted(p.relative_to(root).as_posix() for p in (root / "thumbs").rglob("*.jpg")) == [
        thumb_rel(j.path) for j in plan.jobs]


def test_pages_by_per_page_and_stale_pages_removed(tmp_path):
    plan = make_plan(4, 3, per_page=4)  # rows of 3: 1 row fits under 4 cells per page
    root = run_jobs(tmp_path, plan)
    result = build_all(plan, root, workers=1)
    assert [p.name for p in result.sheets] == [
        "contact-sheet.png", "contact-sheet-2.png", "contact-sheet-3.png", "contact-sheet-4.png"]
    assert [len(p.cells) for p in result.pages] == [3, 3, 3, 3]
    check_cells(result, root)
    assert result.pages[3].title.endswith("page 4/4")
    fewer = make_plan(4, 3, per_page=6)
    again = build_all(fewer, root, workers=1)
    assert [p.name for p in again.sheets] == ["contact-sheet.png", "contact-sheet-2.png"]
    assert sorted(p.name for p in root.glob("contact-sheet*.png")) == [
        "contact-sheet-2.png", "contact-sheet.png"]
    with Image.open(again.sheets[1]) as s:
        assert s.size == again.pages[1].size
    assert 'href="contact-sheet-2.png"' in again.index.read_text()
    assert "contact-sheet-3.png" not in again.index.read_text()


def test_pages_by_pixel_cap(tmp_path):
    plan = make_plan(6, 3)
    root = run_jobs(tmp_path, plan)
    result = build_all(plan, root, workers=1, max_sheet_pixels=60_000)
    assert len(result.sheets) >= 3
    for path in result.sheets:
        with Image.open(path) as s:
            assert s.width * s.height <= 60_000
    check_cells(result, root)


def test_alpha_is_flattened_onto_white(tmp_path):
    plan = make_plan(1, 1)
    store = Store(tmp_path / "out", plan.name, "local")
    store.prepare()
    img = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    img.paste((0, 0, 200, 255), (50, 50, 150, 150))
    store.save(plan.jobs[0], encode(img, "png"), attempts=1, seconds=0, created=0)
    store.close()
    build_all(plan, store.root, workers=1)
    with Image.open(store.root / thumb_rel(plan.jobs[0].path)) as t:
        assert t.mode == "RGB"
        assert all(v >= 248 for v in t.getpixel((1, 1)))
        r, _g, b = t.getpixel((32, 32))
        assert b > 180 and r < 30


def test_jpeg_images_and_mixed_aspect(tmp_path):
    plan = make_plan(2, 2, fmt="jpeg", ratio="16:9")
    root = run_jobs(tmp_path, plan, size=(1344, 768))
    result = build_all(plan, root, workers=1)
    assert result.thumbs_made == 4
    with Image.open(root / thumb_rel(plan.jobs[0].path)) as t:
        assert t.size == (64, 37)
    check_cells(result, root)
    box = result.pages[0].cells[0].box
    assert box[3] - box[1] == 37  # all 16:9: cells are as tall as the thumbnails, no more


def _square_and_wide(tmp_path: Path) -> tuple[Plan, Path]:
    """Two jobs, square then 16:9, two variants x three seeds each; their images on disk."""
    square = make_plan(2, 3)
    wide = make_plan(2, 3, ratio="16:9", prompt="a harbour")
    jobs = list(square.jobs)
    for j in wide.jobs:
        jobs.append(Job(len(jobs), "harbour", j.key, "harbour/" + j.path.split("/", 1)[1],
                        j.body, j.seed, j.vars, j.label.replace("fox", "harbour")))
    plan = Plan("mixed", "m", "mixed.yaml", square.output, tuple(jobs), len(jobs))
    store = Store(tmp_path / "out", plan.name, "local")
    store.prepare()
    for job in plan.jobs:
        size = (256, 256) if job.id == "fox" else (1344, 768)
        store.save(job, encode(Image.new("RGB", size, colour(job.index)), job.ext),
                   attempts=1, seconds=0, created=0)
    store.close()
    return plan, store.root


def test_sheet_cells_take_their_images_aspect_ratio(tmp_path):
    # One sheet of square and 16:9 images: the 16:9 rows are 16:9 cells, not square cells
    # with grey bands above and below the picture.
    plan, root = _square_and_wide(tmp_path)
    result = build_all(plan, root, workers=1)
    (page,) = result.pages
    check_cells(result, root)
    with Image.open(result.sheets[0]) as sheet:
        sheet = sheet.convert("RGB")
        for cell in page.cells:
            left, top, right, bottom = cell.box
            w, h = right - left, bottom - top
            want = 16 / 9 if cell.entry.job.id == "harbour" else 1.0
            assert abs(w / h - want) < 0.05, (cell.entry.job.path, w, h)
            # the picture fills its cell: its colour at the cell's top and bottom edges
            for y in (top + 1, bottom - 2):
                px = sheet.getpixel(((left + right) // 2, y))
                assert all(abs(a - b) <= 8
                           for a, b in zip(px, colour(cell.entry.job.index), strict=True)), y


def test_each_image_on_a_sheet_is_labelled_once(tmp_path):
    # A seed sweep's cell is named by its row (the variant) and its column (the seed): no
    # caption under it repeats them. What lies between two rows of pictures is blank.
    plan, root = _square_and_wide(tmp_path)
    result = build_all(plan, root, workers=1)
    (page,) = result.pages
    rows = [lb for lb in page.labels if lb.kind == "row"]
    cols = [lb for lb in page.labels if lb.kind == "column"]
    assert [lb.text for lb in rows] == ["fox style 0", "fox style 1", "harbour style 0",
                                        "harbour style 1"]
    assert [lb.text for lb in cols] == ["#10", "#11", "#12"]  # one header for both jobs
    tops = sorted({c.box[1] for c in page.cells})
    with Image.open(result.sheets[0]) as sheet:
        sheet = sheet.convert("RGB")
        for cell in page.cells:
            below = [t for t in tops if t > cell.box[1]]
            end = below[0] if below else page.size[1]
            strip = sheet.crop((cell.box[0], cell.box[3], cell.box[2], end))
            assert strip.getcolors() == [(strip.width * strip.height, imaging.BACKGROUND)], (
                cell.entry.job.path)  # no caption: nothing drawn under the picture


def test_thumbnail_zero_uses_images_on_the_fly(tmp_path):
    plan = make_plan(2, 2, thumbnail=0)
    root = run_jobs(tmp_path, plan, size=(600, 300))
    result = build_all(plan, root, workers=1)
    assert result.thumbs_made == 0 and not (root / "thumbs").exists()
    check_cells(result, root)
    page = result.index.read_text()
    assert 'src="images/fox/style-0/10.png"' in page and "thumbs/" not in page


def test_parallel_thumbnails(tmp_path):
    plan = make_plan(4, 4)
    root = run_jobs(tmp_path, plan)
    result = build_all(plan, root, workers=2)
    assert result.thumbs_made == 16
    check_cells(result, root)


def test_unreadable_image_is_marked_not_fatal(tmp_path):
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    # recorded as it is (a changed file would not be done, so not drawn at all)
    job, junk = plan.jobs[1], b"not an image at all"
    (root / "images" / job.path).write_bytes(junk)
    line = {"key": job.key, "path": job.path, "status": "ok", "backend": "local",
            "attempts": 1, "error": None, "sha256": hashlib.sha256(junk).hexdigest(),
            "bytes": len(junk), "seconds": 0, "created": 0}
    with open(root / "results.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    result = build_all(plan, root, workers=1)
    assert result.thumbs_made == 1 and result.missing == 1
    cell = next(c for c in result.pages[0].cells if c.entry.job.index == 1)
    assert cell.entry.state == "failed" and "unreadable" in (cell.entry.reason or "")


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.scripts = 0
        self.text: list[str] = []
        self.viewport = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "meta" and a.get("name") == "viewport":
            self.viewport = True

    def handle_data(self, data):
        self.text.append(data)


def test_index_lists_everything_escaped_with_relative_links(tmp_path):
    evil = 'a "quoted" <script>alert(1)</script> & fox'
    plan = make_plan(2, 2, prompt=evil)
    root = run_jobs(tmp_path, plan, fail={1}, skip={3})
    result = build_all(plan, root, workers=1)
    doc = result.index.read_text(encoding="utf-8")
    page = _Page()
    page.feed(doc)
    assert page.scripts == 0 and page.viewport
    assert "<script>alert(1)" not in doc
    text = "".join(page.text)
    assert evil + " in style 0" in text  # shown as text, intact
    assert "HTTP 400: job 1 refused" in text
    assert "4 images: 2 done, 1 failed, 1 not made yet" in " ".join(text.split())
    assert len(page.imgs) == 2
    for img in page.imgs:
        assert img["loading"] == "lazy"
        src = root / unquote(img["src"])
        assert img["src"].startswith("thumbs/") and src.is_file()
        with Image.open(src) as t:
            assert (int(img["width"]), int(img["height"])) == t.size
        assert img["alt"].startswith(evil)
    for href in page.links:
        assert "://" not in href and not href.startswith("/")
        if not href.startswith("#"):
            assert (root / unquote(href)).exists() or href.startswith("images/fox/style-1/11")
    assert "contact-sheet.png" in page.links


def test_index_wraps_a_wide_sweep_into_bands_like_the_sheet(tmp_path):
    # sixteen seeds across would be a strip of thumbnails: three bands of six or fewer,
    # each with its seeds' headers and both variants' rows, every band six tracks wide
    plan = make_plan(2, 16)
    doc = build_all(plan, run_jobs(tmp_path, plan), workers=1).index.read_text()
    bands = doc.split('<div class="matrix"')[1:]
    assert [re.findall(r"--cols: (\d+)", b)[0] for b in bands] == ["6", "6", "6"]
    heads = [re.findall(r'<div class="colhead">#(\d+)</div>', b) for b in bands]
    assert heads == [[str(s) for s in range(10, 16)], [str(s) for s in range(16, 22)],
                     [str(s) for s in range(22, 26)]]
    for band, seeds in zip(bands, heads, strict=True):
        assert re.findall(r"<h3>(.*?)</h3>", band) == ["style=style 0", "style=style 1"]
        paths = re.findall(r'data-path="([^"]+)"', band)
        assert paths == [f"fox/style-{v}/{s}.png" for v in (0, 1) for s in seeds]


def test_index_names_the_commands_to_review_and_export(tmp_path):
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", build_all(
        plan, root, workers=1).index.read_text())).split())
    out = root.parent  # not outputs/: named with --out
    assert f"imagebatch review sweep.yaml --out {out}" in text
    assert f"imagebatch export sweep.yaml --out {out}" in text
    assert "saved to sweep.picks.json" in text
    elsewhere = tmp_path / "team picks.json"  # another picks file: named with --picks
    text = html.unescape(build_all(plan, root, workers=1, picks_file=elsewhere).index
                         .read_text())
    assert f"imagebatch review sweep.yaml --out {out} --picks '{elsewhere}'" in text


def test_index_percent_encodes_paths(tmp_path):
    body = {"model": "m", "prompt": "x", "seed": 1}
    job = Job(0, "odd", job_key(body), "odd name/#1 ?&.png", canonical_json(body), 1, (),
              "odd #1")
    plan = Plan("odd", "m", "odd.yaml", OutputSettings(thumbnail=32), (job,), 1)
    store = Store(tmp_path / "out", "odd", "local")
    store.prepare()
    store.save(job, encode(Image.new("RGB", (64, 64), (1, 2, 3)), "png"), attempts=1,
               seconds=0, created=0)
    store.close()
    doc = build_all(plan, store.root, workers=1).index.read_text()
    assert 'src="thumbs/odd%20name/%231%20%3F%26.jpg"' in doc
    assert 'href="images/odd%20name/%231%20%3F%26.png"' in doc


def _refuse_replace_under(monkeypatch, root: Path, err: int = errno.EACCES, part: str = "") -> None:
    """os.replace into `root` (or only paths containing `part`) fails, as on a read-only disk."""
    real = os.replace

    def fake(src, dst, *args, **kwargs):
        if str(dst).startswith(str(root)) and part in str(dst):
            raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fake)


@pytest.mark.parametrize("workers,variants", [(1, 1), (2, 4)], ids=["serial", "parallel"])
def test_thumbnail_that_cannot_be_written_is_a_write_error(tmp_path, workers, variants):
    plan = make_plan(variants, 4)
    root = run_jobs(tmp_path, plan)
    (root / "thumbs").write_bytes(b"a file where the thumbnails folder goes")
    with pytest.raises(StoreError, match=r"cannot write .*thumbs.*: Not a directory"):
        build_all(plan, root, workers=workers)
    assert not (root / "index.html").exists()  # not reported as broken images


def test_thumbnail_refused_by_the_disk_is_not_an_unreadable_image(tmp_path, monkeypatch):
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    _refuse_replace_under(monkeypatch, root, errno.ENOSPC, part="thumbs")
    with pytest.raises(StoreError, match="cannot write .*thumbs.*No space left on device"):
        build_all(plan, root, workers=1)
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("name", ["contact-sheet.png", "index.html"])
def test_sheet_or_index_that_cannot_be_written_is_a_write_error(tmp_path, name):
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    (root / name).mkdir()
    with pytest.raises(StoreError, match=f"cannot write {re.escape(str(root / name))}: "):
        build_all(plan, root, workers=1)


def test_read_only_output_folder_is_a_write_error(tmp_path, monkeypatch):
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    build_all(plan, root, workers=1)  # thumbnails made: only sheets and index are written
    before = (root / "index.html").read_bytes()
    _refuse_replace_under(monkeypatch, root)
    with pytest.raises(StoreError, match="cannot write .*contact-sheet.png: Permission denied"):
        build_all(plan, root, workers=1)
    assert (root / "index.html").read_bytes() == before

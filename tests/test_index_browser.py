"""index.html in a real browser (headless chromium over file://): images load, text stays text."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image
from review_helpers import BRIEF, BRIEFED, Outputs, make_outputs, write_lock

from imagebatch.pictures.post import build_all
from imagebatch.pictures.report import anchor
from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key
from imagebatch.storage.store import Store

if TYPE_CHECKING:
    from browser_helpers import Pages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# One chromium per test process, shared with the other browser tests, its pages reused
# (browser_helpers): what is checked here is the page chromium shows, not its command line.
pytest_plugins = ["browser_helpers"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser binary"),
    pytest.mark.asyncio(loop_scope="session"),
]
EVIL = "<script>alert(1)</script> fox & \"friends\""


def _outputs(tmp_path: Path, n: int = 30) -> Path:
    jobs = []
    for i in range(n):
        body = {"model": "m", "prompt": f"{EVIL} {i // 5}", "seed": i + 1,
                "aspect_ratio": "1:1" if i % 2 else "16:9"}
        jobs.append(Job(i, "fox", job_key(body), f"fox/{i // 5} x/{i + 1}.png",
                        canonical_json(body), i + 1, (("v", str(i // 5)),),
                        f"fox {i // 5} #{i + 1}"))
    plan = Plan("browser", "m", "b.yaml", OutputSettings(thumbnail=96), tuple(jobs), n)
    store = Store(tmp_path / "out", plan.name, "local")
    store.prepare()
    for job in jobs[:-1]:
        buf = io.BytesIO()
        Image.new("RGB", (320, 180) if job.index % 2 == 0 else (200, 200),
                  (job.index * 8, 90, 160)).save(buf, format="PNG")
        store.save(job, buf.getvalue(), attempts=1, seconds=0, created=0)
    store.fail(jobs[-1], f"refused: {EVIL}", attempts=1, seconds=0)
    store.close()
    build_all(plan, store.root, workers=1)
    return store.root / "index.html"


async def test_dump_dom_shows_the_prompt_as_text(pages: Pages, tmp_path):
    index = _outputs(tmp_path, 6)
    page = await pages.new("laptop")
    await page.goto(index.as_uri())
    dom = await page.content()  # the document as chromium built it, as --dump-dom prints it
    assert "<figure" in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script>alert(1)" not in dom.replace("&lt;", "<").split("<body", 1)[0]
    assert "<script" not in dom.split("<body", 1)[1]


# Lazy images below the fold load only when asked: make them all eager, then wait (in the
# page) until every one has settled.
SETTLE = """() => new Promise(done => {
    const imgs = Array.from(document.images);
    imgs.forEach(i => { i.loading = 'eager'; });
    const check = () => imgs.every(i => i.complete) ? done(imgs.map(i =>
        [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])) :
        setTimeout(check, 50);
    check();
})"""


async def test_every_image_loads_and_no_script_runs(pages: Pages, tmp_path):
    index = _outputs(tmp_path)
    page = await pages.new("laptop")
    dialogs: list[str] = []
    pages.on(page, "dialog", lambda d: dialogs.append(d.message))
    await page.goto(index.as_uri())
    await page.wait_for_function("() => document.images.length > 0")
    images = await page.evaluate(SETTLE)
    assert len(images) == 29  # one per image on disk; the failed job has none
    broken = [src for src, w, h in images if not (w > 0 and h > 0)]
    assert broken == []
    scripts, text, links = await page.evaluate(
        "[document.scripts.length, document.body.innerText, "
        "Array.from(document.querySelectorAll('a')).map(a => a.href)]")
    assert scripts == 0
    assert EVIL in text and f"refused: {EVIL}" in text
    assert all(link.startswith(("file://", index.as_uri())) for link in links)
    assert dialogs == []  # nothing opened an alert


# -- the layout, as the user sees it (Playwright driving the system chromium) -----------

#: A 2 x 2 matrix of four seeds each: four variants (rows) of four seeds (columns).
CITY = """\
version: 1
name: rv
jobs:
  - id: city
    prompt: "A city skyline at {time}, {style} style"
    aspect_ratio: "1:1"
    matrix:
      style: [cyberpunk, "art deco"]
      time: [dawn, dusk]
    seeds: [1, 2, 3, 4]
"""


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    """CITY's outputs, made once for the tests that only read them."""
    return make_outputs(tmp_path_factory.mktemp("city"), CITY)


async def _open(pages: Pages, index: Path, screen: str):
    page = await pages.new(screen)
    await page.goto(index.as_uri())  # lazy images keep their place: width and height are set
    await page.wait_for_function("() => document.images[0].complete")
    return page


# every figure's box and the row it sits in; headers' boxes and texts; what overflows
LAYOUT = """() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {x: Math.round(r.left), y: Math.round(r.top), r: Math.round(r.right),
            b: Math.round(r.bottom), w: Math.round(r.width), h: Math.round(r.height)}; };
  const shown = (e) => e.offsetParent !== null;
  // a row is `display: contents` on a wide screen: it is shown when its heading is
  const rows = Array.from(document.querySelectorAll('.matrix .row'))
    .filter((row) => shown(row.querySelector('.rowhead')));
  return {
    rows: rows.map((row) => ({
      head: box(row.querySelector('.rowhead')),
      title: row.querySelector('.rowhead h3').innerText,
      figures: Array.from(row.querySelectorAll('figure')).filter(shown).map(box)})),
    cols: Array.from(document.querySelectorAll('.matrix .colhead')).filter(shown)
      .map((c) => [c.innerText, box(c)]),
    seeds: Array.from(document.querySelectorAll('figure')).map((f) => f.innerText),
    scroll: [document.documentElement.scrollWidth, innerWidth],
    grids: Array.from(document.querySelectorAll('.matrix'))
      .map((m) => [m.scrollWidth, m.clientWidth]),
  };
}"""


async def test_index_lays_a_matrix_out_like_the_contact_sheet(pages: Pages, city: Outputs):
    index = city.root / "index.html"
    titles = ["style=cyberpunk, time=dawn", "style=cyberpunk, time=dusk",
              "style=art deco, time=dawn", "style=art deco, time=dusk"]

    # a wide screen: four rows (variants) of four columns (seeds) under their headers
    page = await _open(pages, index, "laptop")
    got = await page.evaluate(LAYOUT)
    await pages.screenshot(page, "1280", full_page=True)
    assert [c[0] for c in got["cols"]] == ["#1", "#2", "#3", "#4"]
    col_x = [c[1]["x"] for c in got["cols"]]
    assert [r["title"] for r in got["rows"]] == titles
    for row in got["rows"]:
        figs = row["figures"]
        assert [f["x"] for f in figs] == col_x  # each seed under its header
        assert len({f["y"] for f in figs}) == 1  # one line per variant
        assert row["head"]["r"] <= figs[0]["x"] and row["head"]["y"] == figs[0]["y"]
    assert len({row["figures"][0]["y"] for row in got["rows"]}) == 4
    # the grid uses the screen: the last column ends in its right quarter, nothing hidden
    assert got["rows"][0]["figures"][-1]["r"] > 0.75 * 1280
    assert all(scroll <= client for scroll, client in got["grids"])
    assert got["scroll"][0] <= got["scroll"][1]

    # a phone: each row's heading above its four pictures, two to a line, nothing wider
    page = await _open(pages, index, "phone")
    got = await page.evaluate(LAYOUT)
    await pages.screenshot(page, "390", full_page=True)
    assert got["scroll"][0] <= got["scroll"][1] == 390
    assert got["cols"] == []  # the headers give way to each picture's own seed
    assert [r["title"] for r in got["rows"]] == titles
    for row in got["rows"]:
        figs = row["figures"]
        assert len(figs) == 4
        assert len({f["x"] for f in figs}) == 2 and len({f["y"] for f in figs}) == 2
        assert row["head"]["b"] <= min(f["y"] for f in figs)
        assert all(f["r"] <= 390 and f["w"] > 150 for f in figs)
    assert all(f"seed {s}" in text for text, s in zip(got["seeds"], [1, 2, 3, 4] * 4,
                                                        strict=True))


async def test_index_says_how_to_review_and_export_and_links_the_sheets(pages: Pages,
                                                                        city: Outputs):
    outputs = city
    page = await _open(pages, outputs.root / "index.html", "laptop")
    text = await page.inner_text("header")
    out = f" --out {outputs.out}"
    assert f"imagebatch review {outputs.manifest}{out}" in text
    assert f"imagebatch export {outputs.manifest}{out}" in text
    assert str(outputs.picks_file) in text
    links = await page.eval_on_selector_all(
        ".sheets a", "as => as.map(a => [a.innerText, a.getAttribute('href')])")
    assert links == [["contact-sheet.png", "contact-sheet.png"]]
    with Image.open(outputs.root / links[0][1]) as sheet:  # the link is the sheet itself
        assert sheet.format == "PNG" and sheet.width > 400
    jobs = await page.eval_on_selector_all("nav[aria-label='Jobs'] a", "as => as.length")
    assert jobs == 0  # one job: no list of jobs to mistake for more sheets


# the brief's paragraph, the heading above it and the grid below it, in the job's section
BRIEF_BOXES = """(id) => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {y: Math.round(r.top), r: Math.round(r.right), b: Math.round(r.bottom)}; };
  const sec = document.getElementById(id);
  const p = sec.querySelector(':scope > p.brief');
  return p && {text: p.innerText, shown: p.offsetParent !== null, box: box(p),
               head: box(sec.querySelector('h2')), grid: box(sec.querySelector('.matrix'))};
}"""


async def test_a_jobs_brief_shows_under_its_heading(pages: Pages, tmp_path):
    write_lock(tmp_path / "rv.yaml", "robots", BRIEF,
               ["a robot watering tulips", "a robot pruning roses"])
    outputs = make_outputs(tmp_path, BRIEFED)
    index = outputs.root / "index.html"
    for width, screen in ((1280, "laptop"), (390, "phone")):
        page = await _open(pages, index, screen)
        got = await page.evaluate(BRIEF_BOXES, anchor("robots"))
        await pages.screenshot(page, str(width), full_page=True)
        assert got["text"] == f"Brief: {BRIEF}" and got["shown"]  # its <b> as text
        assert got["head"]["b"] <= got["box"]["y"] and got["box"]["b"] <= got["grid"]["y"]
        assert got["box"]["r"] <= width  # wrapped on the screen, not past it
        assert await page.evaluate(BRIEF_BOXES, anchor("fox")) is None

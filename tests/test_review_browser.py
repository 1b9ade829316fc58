"""The review page in a real browser (Playwright driving the system chromium), as a user
uses it: keys and clicks, reloads, the picks file on disk, hostile prompts, failed saves."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image, ImageStat
from review_helpers import (
    BRIEF,
    BRIEFED,
    HOSTILE,
    MANIFEST,
    Outputs,
    make_outputs,
    serving,
    write_lock,
)

from imagebatch.planning.manifest import load_plan
from imagebatch.providers.stability import STABILITY
from imagebatch.storage import picks

if TYPE_CHECKING:
    from browser_helpers import Pages

# One chromium per test process, shared with the other browser tests, its pages reused
# (browser_helpers): each test gets a blank page of the kind it asks for, its own until it ends.
pytest_plugins = ["browser_helpers"]
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def outputs(tmp_path: Path) -> Outputs:
    return make_outputs(tmp_path)


class Tab:
    """One page of the review, with what it said on the console and any dialog it opened."""

    def __init__(self, pages: Pages, page, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        pages.on(page, "console",
                 lambda m: self.errors.append(m.text) if m.type == "error" else None)
        pages.on(page, "pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        pages.on(page, "dialog", self._dialog)

    async def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    async def open(self) -> None:
        await self.page.goto(self.url)
        await self.page.wait_for_selector("body[data-items='loaded']")

    async def status(self, path: str) -> str:
        return await self.page.get_attribute(f"[data-path='{path}']", "data-status")

    async def current(self) -> str:
        return await self.page.evaluate("document.activeElement.dataset.cell || ''")


async def _tab(pages: Pages, srv, screen: str = "laptop") -> Tab:
    page = await pages.new(screen)
    tab = Tab(pages, page, srv.url)
    await tab.open()
    return tab


# Page conditions are waited for with wait_for_function("() => ..."): a function, since the
# page's CSP (no 'unsafe-eval') stops Playwright from polling a bare expression string.


async def _until(check, what: str, timeout: float = 10.0) -> None:
    """Wait until `check()` is true (the disk is written by the server, not the page)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _entries(outputs: Outputs) -> dict[str, tuple[str | None, int | None]]:
    try:
        doc = json.loads(outputs.picks_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {p: (e["status"], e["rating"]) for p, e in doc["picks"].items()}


async def test_keys_decide_save_at_once_and_survive_a_reload(pages: Pages, outputs: Outputs
                                                            ) -> None:
    paths = [j.path for j in outputs.plan.jobs]
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("ArrowLeft")
        assert await tab.current() == paths[0]
        await page.keyboard.press("p")
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("x")
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("4")
        await page.keyboard.press("p")
        assert [await tab.status(p) for p in paths[:4]] == ["pick", "reject", "pick", ""]
        want = {paths[0]: ("pick", None), paths[1]: ("reject", None), paths[2]: ("pick", 4)}
        await _until(lambda: _entries(outputs) == want, "the three decisions on disk")

        await page.reload()
        await page.wait_for_selector("body[data-items='loaded']")
        assert [await tab.status(p) for p in paths[:4]] == ["pick", "reject", "pick", ""]
        cell = page.locator(f"figure[data-cell='{paths[2]}']")
        assert await cell.get_attribute("data-rating") == "4"
        assert await cell.locator(".stars button.on").count() == 4
        assert await page.inner_text("[data-count='pick']") == "2"
        assert await page.inner_text("[data-count='reject']") == "1"
        assert await page.inner_text("[data-count='rated']") == "1"
        assert await page.inner_text("[data-count='unrated']") == str(len(paths) - 3)

        # Backspace and 0 clear the entry, rating and all
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("ArrowRight")
        assert await tab.current() == paths[2]
        await page.keyboard.press("Backspace")
        await page.keyboard.press("ArrowLeft")
        await page.keyboard.press("0")
        await _until(lambda: _entries(outputs) == {paths[0]: ("pick", None)}, "two cleared")
        assert tab.errors == [] and tab.dialogs == []


async def _moves(tab: Tab, moves: list[tuple[str, str]]) -> None:
    for key, where in moves:
        await tab.page.keyboard.press(key)
        assert await tab.current() == where, (key, where)


async def test_arrow_keys_follow_the_sheet_rows(pages: Pages, outputs: Outputs) -> None:
    # As on the contact sheet: fox is a row of seeds 1 2 3, and toys, a one-seed matrix, puts
    # its last variable across: a row per style (clay, paper), subjects (boat, kite) across.
    fox1, fox2, fox3, clay_boat, clay_kite, paper_boat, paper_kite = (
        j.path for j in outputs.plan.jobs)
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        await _moves(tab, [
            ("ArrowRight", fox2), ("ArrowRight", fox3), ("ArrowLeft", fox2), ("ArrowLeft", fox1),
            ("ArrowDown", clay_boat), ("ArrowDown", paper_boat), ("ArrowUp", clay_boat),
            ("ArrowUp", fox1), ("ArrowUp", fox1), ("End", paper_kite), ("ArrowUp", clay_kite),
            ("Home", fox1)])


async def test_arrow_keys_in_a_matrix(pages: Pages, tmp_path: Path) -> None:
    # A matrix alone: rows by style, columns by subject (the last variable)
    text = MANIFEST[MANIFEST.index("  - id: toys"):]
    outputs = make_outputs(tmp_path, "version: 1\nname: rv\njobs:\n" + text)
    clay_boat, clay_kite, paper_boat, paper_kite = (j.path for j in outputs.plan.jobs)
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        assert await tab.page.locator(".row").count() == 2
        await _moves(tab, [
            ("ArrowDown", paper_boat), ("ArrowRight", paper_kite), ("ArrowUp", clay_kite),
            ("ArrowLeft", clay_boat), ("ArrowLeft", clay_boat), ("ArrowRight", clay_kite),
            ("ArrowDown", paper_kite), ("ArrowDown", paper_kite)])


async def test_a_hostile_prompt_is_only_text(pages: Pages, outputs: Outputs) -> None:
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        head = page.locator(".rowhead .prompt").first
        assert (await head.inner_text()).startswith(HOSTILE)
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#viewer:not([hidden])")
        assert (await page.inner_text("#v-prompt")).startswith(HOSTILE)
        assert await page.inner_text("#v-negative") == "blurry, <b>bold</b>"
        await page.wait_for_timeout(300)
        injected = await page.evaluate(
            "[document.querySelectorAll('img[src=\"x\"], [onerror]').length"
            " + Array.from(document.querySelectorAll('b')).filter(b => b.textContent === 'bold')"
            ".length,"
            " Array.from(document.images).filter(i => !i.src.startsWith(location.origin)).length]")
        assert injected == [0, 0]
        assert tab.dialogs == [] and tab.errors == []


async def test_clicks_the_large_view_and_its_details(pages: Pages, outputs: Outputs) -> None:
    job = outputs.plan.jobs[1]
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        cell = page.locator(f"figure[data-cell='{job.path}']")
        await cell.locator("[data-act='pick']").click()
        await cell.locator(".stars [data-act='3']").click()
        await _until(lambda: _entries(outputs) == {job.path: ("pick", 3)}, "a click's pick")
        await cell.locator("[data-act='pick']").click()  # pressed again: taken back
        await _until(lambda: _entries(outputs) == {job.path: (None, 3)}, "the pick undone")

        await cell.locator(".pic").click()
        await page.wait_for_selector("#viewer:not([hidden])")
        await page.wait_for_function(
            "() => document.getElementById('v-img').src.includes('/files/images/')"
            " && document.getElementById('v-img').complete"
            " && document.getElementById('v-img').naturalWidth === 240")
        assert await page.inner_text("#v-seed") == "2"
        assert await page.inner_text("#v-params") == "3:2 · 1216×832 · png"
        assert await page.inner_text("#v-file") == f"images/{job.path}"
        await page.click("#viewer [data-act='reject']")
        await page.click("#viewer .stars [data-act='5']")
        await _until(lambda: _entries(outputs) == {job.path: ("reject", 5)}, "viewer clicks")
        assert await tab.status(job.path) == "reject"
        await page.keyboard.press("ArrowRight")  # the next picture, in the large view
        assert await page.inner_text("#v-seed") == "3"
        await page.keyboard.press("Escape")
        assert await page.locator("#viewer").is_hidden()
        assert tab.errors == []


async def test_compare_two_pictures_side_by_side(pages: Pages, outputs: Outputs) -> None:
    a, b = outputs.plan.jobs[0].path, outputs.plan.jobs[2].path
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        assert await page.is_disabled("#compare-open")
        await page.keyboard.press("c")
        await page.keyboard.press("ArrowRight")
        await page.locator(f"figure[data-cell='{b}'] input[data-act='cmp']").check()
        assert await page.inner_text("#compare-n") == "2"
        await page.keyboard.press("v")
        await page.wait_for_selector("#compare:not([hidden])")
        panes = page.locator("#c-panes .pane")
        assert await panes.count() == 2
        assert [await panes.nth(i).get_attribute("data-pane") for i in range(2)] == [a, b]
        await page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#c-panes img'))"
            ".every(i => i.complete && i.naturalWidth === 240)")
        boxes = [await panes.nth(i).bounding_box() for i in range(2)]
        assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] + 1  # side by side
        assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("p")
        await page.keyboard.press("ArrowLeft")
        await page.keyboard.press("x")
        await _until(lambda: _entries(outputs) == {a: ("reject", None), b: ("pick", None)},
                     "decisions made while comparing")
        await page.keyboard.press("Escape")
        assert await page.locator("#compare").is_hidden()
        assert tab.errors == []


async def test_filters_and_counts(pages: Pages, outputs: Outputs) -> None:
    plan = outputs.plan
    p = [j.path for j in plan.jobs]
    picks.update_picks(outputs.picks_file, plan, {p[0]: ("pick", 5), p[1]: ("reject", None),
                                                  p[3]: (None, 2), p[4]: ("pick", None)})
    doc = json.loads(outputs.picks_file.read_text())
    doc["picks"][p[5]] = {"key": "f" * 64, "rating": 4, "status": "pick"}  # another prompt's
    outputs.picks_file.write_text(json.dumps(doc))
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        counts = {k: await page.inner_text(f"[data-count='{k}']")
                  for k in ("all", "pick", "reject", "unrated", "stale", "rated")}
        assert counts == {"all": "7", "pick": "2", "reject": "1", "unrated": "2", "stale": "1",
                          "rated": "2"}
        assert await tab.status(p[5]) == "stale"

        async def shown() -> list[str]:
            return await page.eval_on_selector_all(
                "figure.cell", "cs => cs.filter(c => c.offsetParent !== null)"
                ".map(c => c.dataset.cell)")

        expected = {"pick": [p[0], p[4]], "reject": [p[1]], "stale": [p[5]],
                    "unrated": [p[2], p[6]], "all": p}
        for name, want in expected.items():
            await page.click(f".filters [data-filter='{name}']")
            assert await shown() == want, name
        await page.click(".filters [data-filter='stale']")
        await page.keyboard.press("3")  # deciding again makes it current, the old pick gone
        await _until(lambda: _entries(outputs).get(p[5]) == (None, 3), "the stale entry redone")
        assert await tab.status(p[5]) == ""
        assert await page.inner_text("[data-count='stale']") == "0"


async def test_a_failed_save_is_shown_and_can_be_retried(pages: Pages, outputs: Outputs) -> None:
    path = outputs.plan.jobs[0].path
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        broken = '{"version": 1, "manifest": "rv", "picks": {\n'
        outputs.picks_file.write_text(broken)  # someone's editor, mid-session
        await page.keyboard.press("p")
        toast = page.locator(".toast", has_text="Not saved")
        await toast.wait_for()
        assert str(outputs.picks_file) in await toast.inner_text()
        cell = page.locator(f"figure[data-cell='{path}']")
        assert "unsaved" in (await cell.get_attribute("class")).split()
        assert "NOT saved" in await page.inner_text("#save-state")
        assert outputs.picks_file.read_text() == broken  # never overwritten
        outputs.picks_file.unlink()  # fixed
        await toast.locator("button", has_text="Retry").click()
        await _until(lambda: _entries(outputs) == {path: ("pick", None)}, "the retried save")
        await page.wait_for_function(
            f"() => !document.querySelector(\"figure[data-cell='{path}']\").classList"
            ".contains('unsaved')")
        assert await page.inner_text("#save-state") == ""


async def test_on_a_phone(pages: Pages, outputs: Outputs) -> None:
    path = outputs.plan.jobs[0].path
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv, "phone")
        page = tab.page
        width = await page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert width[0] <= width[1], width  # nothing wider than the screen
        pick = page.locator(f"figure[data-cell='{path}'] [data-act='pick']")
        box = await pick.bounding_box()
        assert box["width"] >= 40 and box["height"] >= 40
        await pick.tap()
        await _until(lambda: _entries(outputs) == {path: ("pick", None)}, "a tapped pick")
        await page.locator(f"figure[data-cell='{path}'] .pic").tap()
        await page.wait_for_selector("#viewer:not([hidden])")
        close = await page.locator("#viewer [data-v='close']").bounding_box()
        assert close["height"] >= 40
        await pages.screenshot(page, "phone")
        assert tab.errors == []


async def test_screenshot_shows_the_pictures(pages: Pages, outputs: Outputs) -> None:
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        await tab.page.wait_for_function(
            "() => Array.from(document.querySelectorAll('img[data-path]'))"
            ".every(i => i.complete && i.naturalWidth > 0)")
        shot = Image.open(io.BytesIO(await tab.page.screenshot())).convert("RGB")
    assert shot.size == (1280, 900)
    stddev = ImageStat.Stat(shot).stddev
    assert min(stddev) > 20, stddev  # a blank or single-colour page has almost none
    # the first thumbnail is on screen with its own colours, not a grey placeholder
    colours = shot.crop((240, 80, 1280, 400)).getcolors(1 << 20)
    assert colours is not None and len(colours) > 500


async def test_an_empty_output_folder(pages: Pages, tmp_path: Path) -> None:
    outputs = make_outputs(tmp_path, skip=range(7), post=False)
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        text = await tab.page.inner_text("main")
    assert "No images yet" in text and f"imagebatch run {outputs.manifest}" in text
    assert tab.errors == []


async def test_more_like_this_saves_the_image_beside_the_manifest_and_copies_the_snippet(
        pages: Pages, outputs: Outputs) -> None:
    job = outputs.plan.jobs[1]
    copy = outputs.manifest.parent / "inputs" / "rv" / "fox-2.png"
    before = sorted((p, p.stat().st_mtime_ns) for p in outputs.manifest.parent.rglob("*")
                    if p.is_file())
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        await page.locator(f"figure[data-cell='{job.path}'] .pic").click()
        await page.wait_for_selector("#viewer:not([hidden])")
        assert await page.locator("#v-more").is_hidden()
        await page.click("#v-more-open")
        await page.wait_for_selector("#v-more:not([hidden])")
        snippet = await page.inner_text("#v-snippet")
        assert snippet.startswith(f"  # more like {job.path}")
        assert "image: inputs/rv/fox-2.png" in snippet and "outputs" not in snippet
        assert "strength: 0.35" in snippet and "random: 4" in snippet
        assert str(copy) in await page.inner_text("#v-more")  # where the copy is, to commit
        await page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.toast')).some("
            "(t) => t.textContent.startsWith('Copied'))")
        copied = await page.evaluate("() => navigator.clipboard.readText()")
        assert copied == snippet
        await page.keyboard.press("ArrowRight")  # another picture: its own snippet, when asked
        assert await page.locator("#v-more").is_hidden()
        assert tab.errors == []
    after = sorted((p, p.stat().st_mtime_ns) for p in outputs.manifest.parent.rglob("*")
                   if p.is_file())
    assert [p for p, _ in after if (p, _) not in before] == [copy]  # that file alone
    assert copy.read_bytes() == (outputs.root / "images" / job.path).read_bytes()
    # The snippet works wherever the manifest goes: without the (ignored) outputs folder,
    # as on CI, the manifest with it pasted in still plans the variations of the picture.
    shutil.rmtree(outputs.out)
    outputs.manifest.write_text(outputs.manifest.read_text() + snippet, encoding="utf-8")
    plan = load_plan(str(outputs.manifest), providers=(STABILITY,))
    more = [j for j in plan.jobs if j.id == "fox-2-more"]
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert len(more) == 4 and all(j.request["image"] == f"sha256:{digest}" for j in more)


# The snippet's box wraps at spaces only and scrolls sideways for a line too long for it:
# every word of the text is on one line (one client rect), none cut in two.
SNIPPET_BOX = """() => {
  const pre = document.getElementById('v-snippet');
  const broken = [];
  const walk = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
  for (let text = walk.nextNode(); text; text = walk.nextNode()) {
    for (const m of text.data.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(text, m.index);
      range.setEnd(text, m.index + m[0].length);
      if (range.getClientRects().length !== 1) broken.push(m[0]);
    }
  }
  const style = getComputedStyle(pre);
  return {broken, lines: pre.getClientRects()[0].height / parseFloat(style.lineHeight),
          scroll: pre.scrollWidth > pre.clientWidth, overflow: style.overflowX};
}"""


async def test_the_snippet_box_wraps_at_spaces_and_scrolls_a_long_line(pages: Pages, tmp_path: Path
                                                                       ) -> None:
    outputs = make_outputs(tmp_path, LONG_ID)
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        await page.locator("figure.cell .pic").first.click()
        await page.wait_for_selector("#viewer:not([hidden])")
        await page.click("#v-more-open")
        await page.wait_for_selector("#v-more:not([hidden])")
        got = await page.evaluate(SNIPPET_BOX)
        await pages.screenshot(page, "snippet")
    assert got["broken"] == []  # no word, path or id broken across lines
    assert got["overflow"] == "auto" and got["scroll"]  # the long id scrolls sideways


#: A job id longer than the snippet's box is wide, and a prompt long enough to wrap.
LONG_ID = """version: 1
name: rv
jobs:
  - id: a-lighthouse-on-a-rocky-coast-at-dusk-under-storm-clouds-in-dramatic-light
    prompt: "a lighthouse on a rocky coast at dusk, storm clouds, dramatic light over the sea"
    aspect_ratio: "1:1"
    seeds: [3]
"""


#: Three rows of two square pictures (the largest cells a row gets), then one image alone.
SQUARES = """\
version: 1
name: rv
jobs:
  - id: tile
    prompt: "a {colour} tile"
    aspect_ratio: "1:1"
    matrix:
      colour: [red, green, blue]
    seeds: [1, 2]
  - id: moon
    prompt: "a moon over a lake"
    aspect_ratio: "1:1"
    seeds: [5]
"""

# each row's heading and its cells' boxes (viewport pixels), the header's bottom edge
ROWS = """() => Array.from(document.querySelectorAll('.row')).map((row) => ({
  head: (row.querySelector('.rowhead h2') || {}).innerText || '',
  cells: Array.from(row.querySelectorAll('figure.cell')).map((c) => {
    const r = c.getBoundingClientRect();
    const img = c.querySelector('img').getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, w: img.width, h: img.height};
  }),
}))"""


async def test_two_full_rows_of_square_pictures_fit_a_laptop_screen(pages: Pages, tmp_path: Path
                                                                    ) -> None:
    outputs = make_outputs(tmp_path, SQUARES)
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv)
        page = tab.page
        rows = await page.evaluate(ROWS)
        top = await page.evaluate("document.querySelector('.bar').getBoundingClientRect().bottom")
        await pages.screenshot(page, "1280")
    for row in rows:
        assert all(abs(c["w"] - c["h"]) <= 1 and c["w"] >= 150 for c in row["cells"])
    whole = [len(r["cells"]) for r in rows
             if all(c["top"] >= top and c["bottom"] <= 900 for c in r["cells"])]
    assert whole[:2] == [2, 2], whole  # two full rows of two on screen


async def test_every_group_has_a_title(pages: Pages, tmp_path: Path) -> None:
    # a job of one image sits in a group of its own: it is titled by its job, as the rows
    # of a sweep are by their variant
    outputs = make_outputs(tmp_path, SQUARES)
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv, "phone")
        rows = await tab.page.evaluate(ROWS)
    assert [r["head"] for r in rows] == ["tile red", "tile green", "tile blue", "moon"]


async def test_filter_labels_stay_whole_on_a_phone(pages: Pages, outputs: Outputs) -> None:
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv, "phone")
        page = tab.page
        boxes = await page.eval_on_selector_all(".filters, .filters button", """els => els.map(
            (e) => { const r = e.getBoundingClientRect();
                     return [e.innerText, e.scrollWidth, e.clientWidth, r.left, r.right]; })""")
    labels = [text.split()[0] for text, *_ in boxes[1:]]
    assert labels == ["All", "Picked", "Rejected", "Unrated", "Stale"]
    for text, scroll_w, client_w, left, right in boxes:
        assert scroll_w <= client_w, (text, scroll_w, client_w)  # nothing clipped or scrolled
        assert left >= 0 and right <= 390, (text, left, right)  # all of it on the screen


async def test_a_tap_on_a_cells_star_rates_it_on_a_touch_screen(pages: Pages, outputs: Outputs
                                                                 ) -> None:
    path = outputs.plan.jobs[1].path
    async with serving(outputs) as srv:
        tab = await _tab(pages, srv, "phone")
        page = tab.page
        cell = page.locator(f"figure[data-cell='{path}']")
        stars = cell.locator(".stars button")
        assert await stars.count() == 5
        for k in range(5):  # every star of an unrated picture is there to tap
            box = await stars.nth(k).bounding_box()
            assert box is not None and box["width"] >= 30 and box["height"] >= 36, box
        await stars.nth(3).tap(timeout=5000)
        await _until(lambda: _entries(outputs) == {path: (None, 4)}, "a tapped rating")
        assert await cell.get_attribute("data-rating") == "4"
        await cell.locator("[data-act='reject']").tap(timeout=5000)
        await _until(lambda: _entries(outputs) == {path: ("reject", 4)}, "a tapped reject")
        # the keys still work beside the taps: the next picture, rated 2
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("2")
        nxt = outputs.plan.jobs[2].path
        await _until(lambda: _entries(outputs) == {path: ("reject", 4), nxt: (None, 2)},
                     "a rating by key")
        assert tab.errors == []


# each group: the brief heading it (or null), whether it is on screen, its images, and
# where the brief ends and the first picture starts
GROUPS = """() => Array.from(document.querySelectorAll('.block')).map((b) => {
  const p = b.querySelector(':scope > .brief');
  const r = p && p.getBoundingClientRect();
  return {brief: p && p.innerText, shown: !!p && p.offsetParent !== null,
          cells: Array.from(b.querySelectorAll('figure.cell')).map((c) => c.dataset.cell),
          bottom: r ? r.bottom : 0, right: r ? r.right : 0,
          first: b.querySelector('figure.cell').getBoundingClientRect().top};
})"""


async def test_a_brief_heads_its_group(pages: Pages, tmp_path: Path) -> None:
    # fox and robots have the same seeds, but robots' prompts were written from a brief:
    # its group of its own, headed by the brief (hostile HTML shown as text)
    write_lock(tmp_path / "rv.yaml", "robots", BRIEF,
               ["a robot watering tulips", "a robot pruning roses"])
    outputs = make_outputs(tmp_path, BRIEFED)
    robots = [j.path for j in outputs.plan.jobs if j.id == "robots"]
    async with serving(outputs) as srv:
        for width, screen in ((1280, "laptop"), (390, "phone")):
            tab = await _tab(pages, srv, screen)
            groups = await tab.page.evaluate(GROUPS)
            await pages.screenshot(tab.page, str(width), full_page=True)
            assert [g["brief"] for g in groups] == [None, f"robots brief: {BRIEF}"]
            brief = groups[1]
            assert brief["cells"] == robots and brief["shown"]
            assert brief["bottom"] <= brief["first"] and brief["right"] <= width
            assert not tab.errors and not tab.dialogs

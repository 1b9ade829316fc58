"""`imagebatch pick`, picks in `status`, and picks marked on contact sheets and index.html."""

from __future__ import annotations

import html.parser
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image
from test_post import colour, make_plan, run_jobs

from imagebatch.cli import main
from imagebatch.pictures import imaging
from imagebatch.pictures.post import build_all
from imagebatch.planning.manifest import load_plan
from imagebatch.storage.picks import PicksError, load_picks, update_picks

if TYPE_CHECKING:
    from browser_helpers import Pages

# The browser tests use the chromium every browser test of the process shares
pytest_plugins = ["browser_helpers"]

MANIFEST = """\
version: 1
name: launch
defaults:
  aspect_ratio: "1:1"
seeds: [1, 2]
output:
  thumbnail: 64
jobs:
  - id: city
    prompt: "A city at {time}"
    matrix:
      time: [dawn, dusk]
  - id: fox
    prompt: "A fox"
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "launch.yaml"
    path.write_text(MANIFEST)
    return path


def pick(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["pick", *args])
    got = capsys.readouterr()
    return code, got.out, got.err


def entries(manifest: Path) -> dict[str, tuple[str | None, int | None]]:
    doc = json.loads(manifest.with_name("launch.picks.json").read_text())
    return {p: (e["status"], e["rating"]) for p, e in doc["picks"].items()}


def test_pick_reject_rate_clear(tmp_path, manifest, capsys):
    m = str(manifest)
    code, out, _ = pick(capsys, m, "city/dawn/1.png", "fox/2.png")
    assert code == 0
    assert out.splitlines() == [
        "city/dawn/1.png: nothing -> picked", "fox/2.png: nothing -> picked",
        f"{tmp_path / 'launch.picks.json'}: picked 2, rejected 0, rated 0, stale 0"]
    assert entries(manifest) == {"city/dawn/1.png": ("pick", None), "fox/2.png": ("pick", None)}
    code, out, _ = pick(capsys, m, "city/dawn/1.png", "--rating", "4")
    assert code == 0 and out.startswith("city/dawn/1.png: picked -> picked, rated 4\n")
    code, out, _ = pick(capsys, m, "city/dawn/1.png", "city/dusk/2.png", "--reject")
    assert code == 0
    assert out.splitlines()[:2] == ["city/dawn/1.png: picked, rated 4 -> rejected, rated 4",
                                    "city/dusk/2.png: nothing -> rejected"]
    code, out, _ = pick(capsys, m, "city/dusk/2.png", "--reject")
    assert code == 0 and out.startswith("city/dusk/2.png: rejected (unchanged)\n")
    assert entries(manifest) == {"city/dawn/1.png": ("reject", 4), "city/dusk/2.png":
                                 ("reject", None), "fox/2.png": ("pick", None)}
    code, out, _ = pick(capsys, m, "fox/2.png", "city/dawn/1.png", "--clear")
    assert code == 0 and "fox/2.png: picked -> nothing" in out
    assert entries(manifest) == {"city/dusk/2.png": ("reject", None)}
    keys = {j.path: j.key for j in load_plan(m).jobs}
    doc = json.loads((tmp_path / "launch.picks.json").read_text())
    assert doc["manifest"] == "launch" and doc["picks"]["city/dusk/2.png"]["key"] == \
        keys["city/dusk/2.png"]


def test_pick_by_the_image_files_own_path(tmp_path, manifest, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = pick(capsys, "launch.yaml", "outputs/launch/images/fox/1.png")
    assert code == 0 and out.startswith("fox/1.png: nothing -> picked\n")
    image = tmp_path / "elsewhere" / "launch" / "images" / "city" / "dusk" / "2.png"
    code, out, _ = pick(capsys, "launch.yaml", str(image), "--out", "elsewhere", "--rating", "5")
    assert code == 0 and out.startswith("city/dusk/2.png: nothing -> rated 5\n")
    assert entries(manifest) == {"fox/1.png": ("pick", None), "city/dusk/2.png": (None, 5)}
    # under another --out the same file path is not one of the plan's images
    code, _, err = pick(capsys, "launch.yaml", "outputs/launch/images/fox/1.png", "--out", "x")
    assert code == 2 and "is not an image of launch.yaml" in err


def test_unknown_path_changes_nothing(tmp_path, manifest, capsys):
    code, _, err = pick(capsys, str(manifest), "fox/9.png")
    assert code == 2 and not (tmp_path / "launch.picks.json").exists()
    assert err.startswith("imagebatch: 'fox/9.png' is not an image of ")
    assert "did you mean 'fox/1.png'?" in err or "did you mean 'fox/2.png'?" in err
    assert "Traceback" not in err
    assert pick(capsys, str(manifest), "fox/1.png")[0] == 0
    before = (tmp_path / "launch.picks.json").read_bytes()
    for bad in ("fox/2.png ../../etc/passwd", "city/dawn/1.png /etc/passwd",
                "city/noon/1.png fox/2.png"):
        code, _, err = pick(capsys, str(manifest), *bad.split(), "--reject")
        assert code == 2 and "was not changed" in err, err
        assert (tmp_path / "launch.picks.json").read_bytes() == before


@pytest.mark.parametrize("args", [["--rating", "6"], ["--rating", "0"], ["--rating", "x"],
                                  ["--reject", "--clear"], ["--rating", "3", "--reject"], []])
def test_bad_options_exit_2(tmp_path, manifest, capsys, args):
    paths = [] if not args else ["fox/1.png"]
    code, _, err = pick(capsys, str(manifest), *paths, *args)
    assert code == 2 and "Traceback" not in err and err.startswith("imagebatch")
    assert not (tmp_path / "launch.picks.json").exists()


def test_a_broken_picks_file_is_located_and_kept(tmp_path, manifest, capsys):
    file = tmp_path / "launch.picks.json"
    file.write_text('{"version": 1, "manifest": "launch", "picks": {\n'
                    '  "fox/1.png": {"key": "abc", "status": "pick"}\n}}\n')
    before = file.read_bytes()
    code, _, err = pick(capsys, str(manifest), "fox/2.png")
    assert code == 2 and file.read_bytes() == before
    assert err == f'{file}:2:24: picks["fox/1.png"].key: must be 64 lowercase hex digits ' \
                  "(a job key), got text 'abc'\n"
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"{file}:2:24: ")


def test_picks_option_names_another_file(tmp_path, manifest, capsys):
    other = tmp_path / "team" / "choice.json"
    assert pick(capsys, str(manifest), "fox/1.png", "--picks", str(other))[0] == 0
    assert not (tmp_path / "launch.picks.json").exists()
    assert list(json.loads(other.read_text())["picks"]) == ["fox/1.png"]
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(tmp_path / "out"), "--picks",
                 str(other)]) == 0
    assert "picks: picked 1, rejected 0, rated 0, stale 0" in capsys.readouterr().out


def test_status_counts_picks_and_stale(tmp_path, manifest, capsys):
    out = str(tmp_path / "out")
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", out]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # no picks file: no picks line
    assert main(["status", str(manifest), "--out", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["picks"] is None
    m = str(manifest)
    for args in (["city/dawn/1.png", "city/dusk/1.png", "fox/1.png"], ["fox/2.png", "--reject"],
                 ["city/dawn/2.png", "--rating", "3"], ["fox/1.png", "--rating", "5"]):
        assert pick(capsys, m, *args)[0] == 0
    assert main(["status", m, "--out", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("picks: picked 3, rejected 1, rated 2, stale 0 "
                        f"({tmp_path / 'launch.picks.json'})")
    manifest.write_text(MANIFEST.replace("A city at", "A town at"))  # city's keys change
    assert main(["status", m, "--out", out, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["picks"] == {"picked": 1, "rejected": 1, "rated": 1, "stale": 3}
    # a shard's status counts the whole plan's picks
    assert main(["status", m, "--out", out, "--shard", "1/2"]) == 0
    assert "picks: picked 1, rejected 1, rated 1, stale 3" in capsys.readouterr().out
    # stale entries stay until cleared
    assert pick(capsys, m, "city/dawn/1.png", "--clear")[0] == 0
    assert "city/dusk/1.png" in entries(manifest)


# ---- marks on sheets and pages ------------------------------------------------------------

def _border(sheet: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """The colour at the middle of a cell's left edge, one pixel in."""
    return sheet.getpixel((box[0] + 1, (box[1] + box[3]) // 2))


def _close(a, b, tol: int = 6) -> bool:
    # a pixel may carry alpha beside an RGB colour: the channels both have are compared
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=False))


def test_sheet_shows_picks_rejects_stale_and_ratings(tmp_path):
    plan = make_plan(2, 3, thumbnail=128)  # wider than the narrowest cell: edge to edge
    root = run_jobs(tmp_path, plan)
    file = tmp_path / "sweep.picks.json"
    paths = [j.path for j in plan.jobs]
    update_picks(file, plan, {paths[0]: ("pick", 5), paths[1]: ("reject", None),
                              paths[2]: (None, 3), paths[4]: ("pick", None)})
    # job 4's decision was made on another picture: its key in the file is not the plan's
    doc = json.loads(file.read_text())
    doc["picks"][paths[4]]["key"] = "0" * 64
    file.write_text(json.dumps(doc))
    result = build_all(plan, root, workers=1, picks_file=file)
    cells = {c.entry.job.index: c for c in result.pages[0].cells}
    assert {i: (c.entry.pick, c.entry.rating) for i, c in cells.items()} == {
        0: ("pick", 5), 1: ("reject", None), 2: ("", 3), 3: ("", None), 4: ("stale", None),
        5: ("", None)}
    assert result.pages[0].title == "sweep — 6 images (1 picked, 1 rejected, 1 stale)"
    with Image.open(root / "contact-sheet.png") as sheet:
        sheet = sheet.convert("RGB")
        assert _close(_border(sheet, cells[0].box), imaging.PICK_INK)
        assert _close(_border(sheet, cells[1].box), imaging.REJECT_INK)
        assert _close(_border(sheet, cells[4].box), imaging.STALE_INK)
        for i in (2, 3, 5):  # undecided: the cell's own picture reaches its edge
            assert _close(_border(sheet, cells[i].box), colour(i), tol=12)
        # the rejected picture is faded toward white; a picked one keeps its colour
        box = cells[1].box
        faded = sheet.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))
        want = [round(c + (255 - c) * imaging.REJECT_DIM) for c in colour(1)]
        assert _close(faded, want, tol=12) and not _close(faded, colour(1), tol=12)
        box = cells[0].box
        assert _close(sheet.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)),
                      colour(0), tol=12)
        # the badges: a PICK badge at the top left of cell 0, a rating badge (dark) on cell 2
        left, top = cells[0].box[:2]
        assert _close(sheet.getpixel((left + 2, top + 8)), imaging.PICK_INK)
        left, top = cells[2].box[:2]
        assert _close(sheet.getpixel((left + 2, top + 8)), imaging.RATING_BACKGROUND)
        badge = sheet.crop((left, top, left + 40, top + 20)).getcolors(4096)
        assert any(_close(c, imaging.STAR_INK, 30) for _, c in badge)  # the drawn star


def test_no_picks_file_no_marks(tmp_path):
    plan = make_plan(1, 2)
    root = run_jobs(tmp_path, plan)
    result = build_all(plan, root, workers=1, picks_file=tmp_path / "none.picks.json")
    assert all(c.entry.pick == "" and c.entry.rating is None for c in result.pages[0].cells)
    assert 'data-status=""' in result.index.read_text()


class _Figures(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict] = []
        self.badges: list[list[str]] = []  # [class, text]
        self._depth = 0  # spans open inside the current badge

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append(a)
        elif tag == "span" and self._depth:
            self._depth += 1
        elif tag == "span" and (a.get("class") or "").startswith("badge"):
            self.badges.append([a["class"], ""])
            self._depth = 1

    def handle_data(self, data):
        if self._depth:
            self.badges[-1][1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._depth:
            self._depth -= 1


def test_index_marks_every_image_with_its_path_and_status(tmp_path):
    plan = make_plan(2, 2)
    root = run_jobs(tmp_path, plan, fail={3})
    file = tmp_path / "sweep.picks.json"
    paths = [j.path for j in plan.jobs]
    update_picks(file, plan, {paths[0]: ("pick", 4), paths[1]: ("reject", None),
                              paths[3]: ("pick", None)})
    doc = build_all(plan, root, workers=1, picks_file=file).index.read_text()
    page = _Figures()
    page.feed(doc)
    figs = {f["data-path"]: f for f in page.figures}
    assert list(figs) == paths
    assert [figs[p]["data-status"] for p in paths] == ["pick", "reject", "", "pick"]
    assert figs[paths[0]]["class"] == "pick" and figs[paths[1]]["class"] == "reject"
    assert "class" not in figs[paths[2]]
    assert [(c, " ".join(t.split())) for c, t in page.badges] == [
        ("badge pick", "PICK"), ("badge rating", "★ 4"), ("badge reject", "REJECT"),
        ("badge pick", "PICK")]
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", doc)).split())
    assert "2 picked, 1 rejected, 1 rated, 0 stale" in text


def test_run_and_sheet_refuse_a_broken_picks_file_before_anything(tmp_path, manifest, capsys):
    file = tmp_path / "launch.picks.json"
    file.write_text('{"version": 1, "manifest": "launch", "picks": {"fox/1.png": 5}}')
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'{file}:1:61: picks["fox/1.png"]: must be an object') and \
        "Traceback" not in err
    assert not out.exists()  # nothing sent, nothing written
    file.unlink()
    assert main(["run", str(manifest), "--out", str(out)]) == 0
    index = out / "launch" / "index.html"
    before = index.read_bytes()
    file.write_text("{nope")
    capsys.readouterr()
    assert main(["sheet", str(manifest), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"{file}:1:2: not valid JSON")
    assert index.read_bytes() == before


def test_run_sheet_and_merge_mark_the_picks(tmp_path, manifest, capsys):
    m = str(manifest)
    assert pick(capsys, m, "fox/1.png")[0] == 0
    assert pick(capsys, m, "city/dusk/2.png", "--reject")[0] == 0
    out = tmp_path / "out"
    assert main(["run", m, "--out", str(out)]) == 0

    def statuses(root: Path) -> dict[str, str]:
        page = _Figures()
        page.feed((root / "index.html").read_text())
        return {f["data-path"]: f["data-status"] for f in page.figures if f["data-status"]}

    assert statuses(out / "launch") == {"fox/1.png": "pick", "city/dusk/2.png": "reject"}
    assert pick(capsys, m, "fox/1.png", "--clear")[0] == 0
    assert main(["sheet", m, "--out", str(out)]) == 0
    assert statuses(out / "launch") == {"city/dusk/2.png": "reject"}
    for k in (1, 2):
        assert main(["run", m, "--out", str(tmp_path / f"s{k}"), "--shard", f"{k}/2"]) == 0
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out",
                 str(tmp_path / "merged"), "--manifest", m]) == 0
    assert statuses(tmp_path / "merged" / "launch") == {"city/dusk/2.png": "reject"}


def test_load_picks_of_a_shard_plan_does_not_check_other_shards(tmp_path, manifest):
    whole = load_plan(str(manifest))
    update_picks(tmp_path / "launch.picks.json", whole,
                 {j.path: ("pick", None) for j in whole.jobs})
    shard = load_plan(str(manifest), shard=(1, 2))
    assert 0 < len(shard.jobs) < len(whole.jobs)
    with pytest.raises(PicksError, match="not an image of the plan"):
        load_picks(tmp_path / "launch.picks.json", shard)
    root = tmp_path / "out" / "launch"
    root.mkdir(parents=True)
    result = build_all(shard, root, workers=1, picks_file=tmp_path / "launch.picks.json")
    assert all(c.entry.pick == "pick" for c in result.pages[0].cells)


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")  # the session's chromium (browser_helpers)
@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_index_marks_in_a_real_browser(pages: Pages, tmp_path, scheme):
    plan = make_plan(2, 2, prompt='<img src=x onerror="document.title=1">')
    root = run_jobs(tmp_path, plan)
    file = tmp_path / "sweep.picks.json"
    paths = [j.path for j in plan.jobs]
    update_picks(file, plan, {paths[0]: ("pick", 5), paths[1]: ("reject", None),
                              paths[2]: ("reject", 2)})
    # paths[1] was decided on another picture: stale
    file.write_text(file.read_text().replace(plan.jobs[1].key, "f" * 64))
    index = build_all(plan, root, workers=1, picks_file=file).index
    page = await pages.new("phone", color_scheme=scheme)
    await page.goto(index.as_uri())
    got = await page.eval_on_selector_all("figure", """figs => figs.map(f => [
        f.dataset.path, f.dataset.status, getComputedStyle(f).borderLeftColor,
        f.querySelector('img') ? getComputedStyle(f.querySelector('img')).opacity : null,
        Array.from(f.querySelectorAll('.badge')).map(b => b.innerText.trim())])""")
    assert (await page.title()).startswith("sweep")  # the prompt's onerror never ran
    assert await page.evaluate("document.scripts.length") == 0
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling on a phone
    rows = {p: (s, c, o, b) for p, s, c, o, b in got}
    assert rows[paths[0]] == ("pick", "rgb(22, 140, 60)", "1", ["PICK", "★ 5"])
    assert rows[paths[1]][0] == "stale" and rows[paths[1]][1] == "rgb(200, 120, 0)"
    assert rows[paths[1]][3] == ["STALE"]
    assert rows[paths[2]] == ("reject", "rgb(190, 30, 30)", "0.4", ["REJECT", "★ 2"])
    assert rows[paths[3]][0] == "" and rows[paths[3]][3] == []

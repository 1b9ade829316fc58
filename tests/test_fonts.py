"""Captions in every script: font chain, clusters, bidi order, and the pixels drawn.

Tests that need system fonts skip when fontconfig finds none for a sample, except under CI
(CI set), where `make test` installs them (fonts-noto-core, -cjk, -color-emoji) and a
missing font is a failure.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageStat

from imagebatch.pictures import fonts, imaging
from imagebatch.pictures.imaging import OK, Entry
from imagebatch.planning.plan import Job, canonical_json, job_key

SAMPLES = {
    "japanese": "東京の夜景と桜",
    "chinese": "山水画中的小船",
    "hebrew": "שלום עולם",
    "arabic": "مرحبا بالعالم",
    "emoji": "🦊🌙👨‍👩‍👧🇯🇵",
    "combining": "cafe\u0301 nai\u0308ve",
    "mixed": "fox 狐 שועל ثعلب 🦊",
}
WHITE = (255, 255, 255)
INK = (0, 0, 0)


@pytest.fixture(autouse=True)
def _fresh_lookup():
    """Each test sees the machine's fonts as they are (a test may hide fontconfig)."""
    fonts.forget()
    yield
    fonts.forget()


def _require(text: str, *, shaping: bool = False) -> None:
    """Skip unless a system font has every character of `text` (fail under CI instead)."""
    system = [f for f in fonts.faces() if f is not fonts.BUNDLED]
    lacking = sorted({c for c in text if not c.isspace() and not fonts._ignorable(c)
                      and not any(f.covers(c) for f in system)})
    why = ""
    if lacking:
        why = (f"no system font has {''.join(lacking)!r} (install fonts-noto-core "
               "fonts-noto-cjk fonts-noto-color-emoji fontconfig)")
    elif shaping and not fonts.RAQM:
        why = "Pillow has no libraqm here (install libraqm0) to shape Arabic"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def _draw(text: str, size: int = 40) -> Image.Image:
    img = Image.new("RGB", (int(fonts.measure(text, size)) + 40, size * 2), WHITE)
    fonts.draw_text(img, (20, size // 3), text, size, INK)
    return img


def _ink(img: Image.Image) -> Image.Image:
    """`img` cropped to what was drawn on the white background."""
    box = ImageChops.difference(img, Image.new("RGB", img.size, WHITE)).getbbox()
    assert box is not None, "nothing drawn"
    return img.crop(box)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def _notdef_boxes(size: int, text: str) -> list[Image.Image]:
    """What the faces that draw `text` (and the first and bundled ones) draw when they lack
    a character: the missing-glyph box."""
    used = {run.face for run in fonts.runs(text)} | {fonts._first(), fonts.BUNDLED}
    boxes = []
    for face in used:
        font = fonts._load(face, size)
        if font is None or face.color:
            continue
        img = Image.new("RGB", (size * 3, size * 3), WHITE)
        ImageDraw.Draw(img).text((size, size), "\U0010fffe", font=font, fill=INK)
        shape = img.convert("L").point(lambda v: 255 if v < 128 else 0)
        if sum(1 for v in shape.tobytes() if v) >= 8:  # a box that can be told from paper
            boxes.append(_ink(img))
    return boxes


def _offset(img: Image.Image, part: Image.Image) -> tuple[int, float]:
    """(x, mean difference) where `part` best matches a slice of `img` (same height)."""
    best = (0, float("inf"))
    for x in range(img.width - part.width + 1):
        diff = ImageChops.difference(img.crop((x, 0, x + part.width, img.height)), part)
        score = ImageStat.Stat(diff.convert("L")).mean[0]
        if score < best[1]:
            best = (x, score)
    return best


# -- the chain ----------------------------------------------------------------------------


def test_fontconfig_charsets_are_read_as_ranges():
    assert fonts.parse_charset("20-7e a0-377 5d0 1f600-1f64f") == (
        0x20, 0x7E, 0xA0, 0x377, 0x5D0, 0x5D0, 0x1F600, 0x1F64F)
    assert fonts.parse_charset("not a charset") == ()
    assert fonts.parse_charset("7e-20") == ()
    face = fonts._face("/x.ttf", 0, False, fonts.parse_charset("20-7e 5d0-5ea"))
    assert face.covers("A") and face.covers("א") and not face.covers("é")


def test_without_fontconfig_the_bundled_font_draws_and_stand_ins_replace_the_rest(
        monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no fc-match anywhere
    fonts.forget()
    assert fonts.faces() == (fonts.BUNDLED,)
    assert imaging.drawable("a — b × c") == "a - b x c"
    assert imaging.drawable("東京") == "東京"  # nothing to stand in: drawn as missing glyphs
    assert fonts.measure("fox #1", 14) == imaging.font(14).getlength("fox #1")
    img = _draw("fox 東京 שלום 🦊", 20)  # every character still drawn, none fails
    assert _ink(img).width > 40


def test_a_broken_fontconfig_answer_is_no_system_font(monkeypatch, tmp_path):
    fake = tmp_path / "fc-match"
    fake.write_text("#!/bin/sh\necho 'garbage' ; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    fonts.forget()
    assert fonts.faces() == (fonts.BUNDLED,)


def test_fontconfig_is_asked_once_not_per_caption(monkeypatch):
    calls = []
    real = fonts._fontconfig_faces
    monkeypatch.setattr(fonts, "_fontconfig_faces", lambda: calls.append(1) or real())
    fonts.forget()
    for i in range(50):
        fonts.measure(f"caption {i} 東京 שלום", 14)
        imaging.wrap(f"caption {i} 東京の夜景 שלום עולם", 80, 14, 2)
    assert calls == [1]


def test_line_breaks_and_control_characters_draw_as_spaces():
    for text in ("fox a\tb\nc", "a\rb\x85c\u2029d", "שלום\nעולם", "東京\x00\x1b"):
        spaced = fonts.one_line(text)
        assert spaced.isprintable() and len(spaced) == len(text)
        assert fonts.measure(text, 16) == fonts.measure(spaced, 16)
        assert _same(_draw(text, 16), _draw(spaced, 16))
        wrapped = [fonts.one_line(line).strip() for line in imaging.wrap(text, 300, 14, 2)]
        assert wrapped == imaging.wrap(spaced, 300, 14, 2)


# -- clusters and bidi ------------------------------------------------------------------


def test_clusters_keep_marks_and_emoji_sequences_whole():
    assert fonts.clusters("e\u0301a") == ["e\u0301", "a"]
    assert fonts.clusters("👨‍👩‍👧x") == ["👨‍👩‍👧", "x"]
    assert fonts.clusters("🇯🇵🇫🇷") == ["🇯🇵", "🇫🇷"]
    assert fonts.clusters("1\ufe0f\u20e3👍🏽") == ["1\ufe0f\u20e3", "👍🏽"]
    assert fonts.clusters("שָׁלוֹם") == ["שָׁ", "ל", "וֹ", "ם"]


@pytest.mark.parametrize(("text", "want_levels", "base"), [
    ("abc", [0, 0, 0], 0),
    ("אבג", [1, 1, 1], 1),
    ("ab אב", [0, 0, 0, 1, 1], 0),
    ("אב 12", [1, 1, 1, 2, 2], 1),
    ("abc אב 12 d", [0, 0, 0, 0, 1, 1, 1, 2, 2, 0, 0], 0),
    ("بب 12", [1, 1, 1, 2, 2], 1),
    ("אב! ", [1, 1, 1, 1], 1),
    ("a! אב", [0, 0, 0, 1, 1], 0),
])
def test_bidi_levels_follow_the_unicode_algorithm(text, want_levels, base):
    assert fonts.levels(text) == (want_levels, base)


def test_runs_are_in_display_order():
    _require("אב")
    runs = fonts.runs("abc אבג 12 def")
    shown = "".join(r.text[::-1] if r.rtl else r.text for r in runs)
    assert shown == "abc 12 גבא def"  # the Hebrew word reads right to left, the digits not
    assert [r.rtl for r in fonts.runs("אבג")] == [True]


# -- pixels: no missing-glyph boxes, right order, inside the box -------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_script_is_drawn_with_real_glyphs(name):
    text = SAMPLES[name]
    _require(text, shaping=name in ("arabic", "mixed"))
    boxes = _notdef_boxes(40, text)
    assert boxes, "the chain has no missing-glyph box to compare with"
    for cluster in fonts.clusters(text):
        if cluster.isspace():
            continue
        glyph = _ink(_draw(cluster))
        assert not any(_same(glyph, box) for box in boxes), (name, cluster)
        if cluster in "🦊🌙":  # in colour, not a black outline
            assert glyph.convert("HSV").getchannel("S").getextrema()[1] > 150, cluster
    whole = _ink(_draw(text))
    assert whole.width > 0.6 * fonts.measure(text, 40)


def test_a_combining_mark_is_placed_on_its_letter():
    _require("e\u0301")
    decomposed, composed, bare = (_ink(_draw(t)) for t in ("e\u0301", "é", "e"))
    assert decomposed.height > bare.height + 5  # the accent stands above the e
    assert abs(decomposed.width - composed.width) <= 2  # not beside it
    assert fonts.measure("e\u0301", 40) == pytest.approx(fonts.measure("e", 40), abs=1)


def _position(line: str, glyph: str) -> int:
    """Where the ink of `glyph`, drawn alone, is found in `line` as drawn (x in px)."""
    alone = _draw(glyph)  # both drawn from the same top-left: the baselines are level
    box = ImageChops.difference(alone, Image.new("RGB", alone.size, WHITE)).getbbox()
    assert box is not None
    drawn = _draw(line)
    band = drawn.crop((0, box[1], drawn.width, box[3]))
    x, diff = _offset(band, alone.crop(box))
    assert diff < 8, (line, glyph, diff)  # found as drawn alone
    return x


@pytest.mark.parametrize("raqm", [True, False], ids=["libraqm", "without-libraqm"])
def test_hebrew_is_drawn_right_to_left(monkeypatch, raqm):
    _require("אב🦊")
    if raqm and not fonts.RAQM:
        pytest.skip("Pillow has no libraqm here")
    if not raqm:  # as on a machine without libraqm: the order is put right by hand
        monkeypatch.setattr(fonts, "LAYOUT", ImageFont.Layout.BASIC)
        fonts.forget()
    assert _position("אב", "א") > _position("אב", "ב")  # alef, written first, on the right
    # Across faces (the fox is another font): the runs themselves go right to left.
    assert _position("א 🦊 ב", "א") > _position("א 🦊 ב", "ב")
    # Latin inside Hebrew keeps its own order; the Hebrew around it does not.
    line = "א abc ב"
    assert _position(line, "א") > _position(line, "c") > _position(line, "a") > _position(
        line, "ב")


def test_arabic_letters_join():
    _require("بب", shaping=True)
    joined = _ink(_draw("ببب"))
    alone = _ink(_draw("ب"))
    # Joined forms are narrower than three isolated letters side by side.
    assert joined.width < 3 * alone.width - 10


def test_drawn_text_stays_within_its_measured_width():
    _require("".join(SAMPLES.values()), shaping=True)
    for name, text in SAMPLES.items():
        for size in (14, 24):
            img = Image.new("RGB", (int(fonts.measure(text, size)) + 80, size * 3), WHITE)
            fonts.draw_text(img, (40, size), text, size, INK)
            box = ImageChops.difference(img, Image.new("RGB", img.size, WHITE)).getbbox()
            assert box is not None
            assert box[0] >= 40 - 2 and box[2] <= 40 + fonts.measure(text, size) + 2, (
                name, size, box)
            line = fonts.ascent(size) + imaging.font(size).getmetrics()[1]
            assert box[1] >= size - 2 and box[3] <= size + line + 2, (name, size, box)


def test_wrap_and_ellipsize_fit_mixed_scripts():
    _require("".join(SAMPLES.values()))
    long_ja = "夕暮れの東京タワーと満開の桜、川面に映る灯りと小さな舟がゆっくりと進む風景"
    lines = imaging.wrap(long_ja, 120, 14, 2)
    assert len(lines) == 2 and lines[1].endswith("…")
    assert "".join(lines)[:-1] == long_ja[:len("".join(lines)) - 1]  # nothing skipped
    assert all(fonts.measure(line, 14) <= 120 for line in lines)
    assert fonts.measure(lines[0], 14) > 90  # the first line is filled, not cut at a word
    for text in SAMPLES.values():
        long = " ".join([text] * 6)
        for width in (60, 112, 200):
            for line in imaging.wrap(long, width, 14, 2):
                assert fonts.measure(line, 14) <= width, (line, width)
            cut = imaging.ellipsize(long, width, 16)
            assert cut.endswith("…") and fonts.measure(cut, 16) <= width
    assert imaging.drawable("a — b") == "a — b"  # a system font has the dash itself


def _job(index: int, label: str) -> Job:
    body = {"model": "m", "prompt": label, "seed": index + 1}
    return Job(index, f"j{index}", job_key(body), f"j{index}/1.png", canonical_json(body),
               index + 1, (), label)


def test_contact_sheet_captions_in_every_script_stay_in_their_cells():
    _require("".join(SAMPLES.values()), shaping=True)
    labels = [f"{name} {text} {text}" for name, text in SAMPLES.items()]
    entries = [Entry(_job(i, label), OK) for i, label in enumerate(labels)]
    (page,) = imaging.layout("多言語 שלום 🦊", entries, box=(112, 64))
    sheet = imaging.render(page, lambda e: Image.new("RGB", (64, 64), (30, 90, 200)))
    boxes = _notdef_boxes(imaging.CAPTION_SIZE, " ".join(labels))
    cells = sorted(page.cells, key=lambda c: c.box[0])
    for cell in cells:
        left, top, right, bottom = cell.caption
        # Between this cell and the next there is only background: no caption overflows.
        gap = sheet.crop((right, top, right + imaging.GAP, bottom))
        assert ImageChops.difference(gap, Image.new("RGB", gap.size, imaging.BACKGROUND)
                                     ).getbbox() is None, cell.entry.job.label
        caption = sheet.crop(cell.caption)
        assert caption.convert("L").getextrema()[0] < 128  # drawn
        lines = imaging.wrap(imaging.drawable(cell.entry.job.label), right - left - 4,
                             imaging.CAPTION_SIZE, imaging.CAPTION_LINES)
        assert len(lines) == 2  # long labels use both lines
        for line in lines:
            for cluster in fonts.clusters(line):
                if cluster.isspace() or cluster == "…":
                    continue
                glyph = Image.new("RGB", (60, 60), WHITE)
                fonts.draw_text(glyph, (10, 10), cluster, imaging.CAPTION_SIZE, INK)
                assert not any(_same(_ink(glyph), box) for box in boxes), cluster
    title = next(lb for lb in page.labels if lb.kind == "title")
    band = sheet.crop(title.box)
    assert ImageChops.difference(band, Image.new("RGB", band.size, imaging.BACKGROUND)
                                 ).getbbox() is not None


def test_the_embedded_server_draws_prompts_in_every_script(monkeypatch, tmp_path):
    _require(SAMPLES["japanese"] + SAMPLES["hebrew"])
    from imagebatch.service import render

    prompt = f"{SAMPLES['japanese']} {SAMPLES['hebrew']} " * 4
    lines = render._wrap(prompt, 24, 300, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(fonts.measure(line, 24) <= 300 for line in lines)
    request = {"prompt": prompt, "aspect_ratio": "1:1"}
    drawn = render.render_image(request, 7)
    assert _same(drawn, render.render_image(request, 7))  # still deterministic
    monkeypatch.setenv("PATH", str(tmp_path))  # the same prompt with the bundled font alone
    fonts.forget()
    boxes = render.render_image(request, 7)
    panel = (0, drawn.height * 2 // 3, drawn.width, drawn.height)  # where the prompt is
    assert not _same(drawn.crop(panel), boxes.crop(panel))


POLYGLOT = """\
version: 1
name: polyglot
defaults:
  aspect_ratio: "1:1"
seeds: [1]
output:
  path: "{id}/{key}.{ext}"
  thumbnail: 128
jobs:
  - id: place
    prompt: "a street in {city}"
    matrix:
      city: ["東京の下町", "山水画中的小船", "תל אביב", "القاهرة", "Zu\\u0308rich 🇨🇭🦊"]
"""


def _sheet_of_a_run(tmp_path, name: str) -> tuple[Image.Image, imaging.Page]:
    """A real run of POLYGLOT on the embedded server: its contact sheet and its layout."""
    from imagebatch.cli import main
    from imagebatch.planning.manifest import load_plan

    manifest = tmp_path / "polyglot.yaml"
    manifest.write_text(POLYGLOT, encoding="utf-8")
    assert main(["run", str(manifest), "--local", "--out", str(tmp_path / name)]) == 0
    with Image.open(tmp_path / name / "polyglot" / "contact-sheet.png") as sheet:
        sheet.load()
    plan = load_plan(str(manifest))
    (page,) = imaging.layout(plan.name, [Entry(job, OK) for job in plan.jobs], box=(128, 128))
    assert page.size == sheet.size  # the layout the run drew
    return sheet, page


def test_a_run_on_the_embedded_server_captions_every_script(tmp_path, monkeypatch):
    _require("東京の下町山水画中的小船תל אביבالقاهرةü🇨🇭🦊", shaping=True)
    sheet, page = _sheet_of_a_run(tmp_path, "fonts")
    # The captions on disk are the ones drawn here, cluster by cluster with real glyphs
    # (as the tests above check); with no pictures only the cells themselves differ.
    # The cities run across the sheet: each is its column's header (the cells under the
    # headers have no caption), drawn in the header size.
    again = imaging.render(page, lambda e: None)
    boxes = _notdef_boxes(imaging.HEADER_SIZE, POLYGLOT)
    heads = [lb for lb in page.labels if lb.kind == "column"]
    assert len(heads) == 5
    for lb in heads:
        assert _same(sheet.crop(lb.box), again.crop(lb.box)), lb.text
        assert sheet.crop(lb.box).convert("L").getextrema()[0] < 128  # drawn
        width = lb.box[2] - lb.box[0] - 8
        line = imaging.ellipsize(imaging.drawable(lb.text), width, imaging.HEADER_SIZE)
        assert fonts.measure(line, imaging.HEADER_SIZE) <= width
        for cluster in fonts.clusters(line):
            if not cluster.isspace() and cluster != "…":
                glyph = Image.new("RGB", (60, 60), WHITE)
                fonts.draw_text(glyph, (10, 10), cluster, imaging.HEADER_SIZE, INK)
                assert not any(_same(_ink(glyph), box) for box in boxes), cluster
    # The same run with fontconfig hidden draws the bundled font's boxes instead.
    monkeypatch.setenv("PATH", str(tmp_path))
    fonts.forget()
    assert not fonts.covered("東") and not fonts.covered("א")
    bare, bare_page = _sheet_of_a_run(tmp_path, "bundled")
    bare_heads = [lb for lb in bare_page.labels if lb.kind == "column"]
    assert [lb.text for lb in bare_heads] == [lb.text for lb in heads]
    for lb, bare_lb in zip(heads, bare_heads, strict=True):
        assert not _same(sheet.crop(lb.box), bare.crop(bare_lb.box))

"""PURE imaging: thumbnails, grid modes, sheet layout and pagination, rendering by pixels."""

from __future__ import annotations

import io

from PIL import Image, ImageChops

from imagebatch.pictures import imaging
from imagebatch.pictures.imaging import FAILED, MISSING, OK, Entry
from imagebatch.planning.plan import Job, canonical_json, job_key


def job(index: int, seed: int, job_id: str = "fox", vars: tuple = (), ratio: str = "1:1",
        label: str | None = None) -> Job:
    body = {"model": "m", "prompt": f"{job_id} " + " ".join(v for _, v in vars),
            "aspect_ratio": ratio, "seed": seed}
    path = "/".join([job_id, *(v for _, v in vars), f"{seed}.png"])
    text = label if label is not None else " ".join(f"{job_id} {' '.join(v for _, v in vars)} "
                                                    f"#{seed}".split())
    return Job(index, job_id, job_key(body), path, canonical_json(body), seed, tuple(vars), text)


def sweep(variants: int, seeds: int) -> list[Entry]:
    out = []
    for v in range(variants):
        for s in range(seeds):
            out.append(Entry(job(len(out), 100 + s, vars=(("style", f"v{v}"),)), OK))
    return out


def colour(i: int) -> tuple[int, int, int]:
    return ((37 * i + 40) % 256, (91 * i + 10) % 256, (151 * i + 200) % 256)


def centre(box: tuple[int, int, int, int]) -> tuple[int, int]:
    return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    # a pixel may carry alpha beside an RGB colour: the channels both have are compared
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=False))


# -- thumbnails -------------------------------------------------------------------------


def test_thumbnail_longest_side_and_aspect():
    img = Image.new("RGB", (1344, 768), (10, 200, 30))
    t = imaging.thumbnail(img, 256)
    assert t.size == (256, 146) and t.mode == "RGB"
    assert close(t.getpixel((128, 73)), (10, 200, 30))


def test_thumbnail_flattens_alpha_onto_white():
    img = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    img.paste((200, 0, 0, 255), (128, 128, 384, 384))
    t = imaging.thumbnail(img, 128)
    assert t.mode == "RGB" and t.size == (128, 128)
    assert t.getpixel((2, 2)) == (255, 255, 255)
    assert close(t.getpixel((64, 64)), (200, 0, 0))


def test_thumbnail_palette_with_transparency():
    img = Image.new("P", (300, 300), 0)
    img.putpalette([0, 0, 0, 0, 0, 250] + [0] * 762)
    img.paste(1, (100, 100, 200, 200))
    img.info["transparency"] = 0
    t = imaging.thumbnail(img, 150)
    assert t.mode == "RGB"
    assert t.getpixel((5, 5)) == (255, 255, 255)
    assert close(t.getpixel((75, 75)), (0, 0, 250))


def test_thumbnail_of_jpeg_uses_reduced_decode_and_keeps_colour():
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), (30, 90, 220)).save(buf, format="JPEG", quality=95)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        t = imaging.thumbnail(img, 256)
        # draft() decoded at 1/4 scale: the loaded image is the reduced one, not 1024 px.
        assert img.size == (256, 256)
    assert t.size == (256, 256)
    assert close(t.getpixel((128, 128)), (30, 90, 220), 8)


def test_thumbnail_never_enlarges():
    t = imaging.thumbnail(Image.new("RGB", (100, 50), (1, 2, 3)), 256)
    assert t.size == (100, 50)


# -- grid modes and layout --------------------------------------------------------------


def test_grid_modes():
    assert imaging.grid_mode(sweep(2, 3)) == "seeds"
    matrix = [Entry(job(i, 1, vars=(("a", a), ("b", b))), OK)
              for i, (a, b) in enumerate([("x", "1"), ("x", "2"), ("y", "1"), ("y", "2")])]
    assert imaging.grid_mode(matrix) == "matrix"
    plain = [Entry(job(i, 1, job_id=f"j{i}"), OK) for i in range(5)]
    assert imaging.grid_mode(plain) == "plain"


def test_seed_sweep_rows_are_variants_columns_are_seeds():
    entries = sweep(3, 4)
    (page,) = imaging.layout("demo", entries, box=(64, 64), per_page=100)
    cols = [lb for lb in page.labels if lb.kind == "column"]
    rows = [lb for lb in page.labels if lb.kind == "row"]
    assert [c.text for c in cols] == ["#100", "#101", "#102", "#103"]
    assert [r.text for r in rows] == ["fox v0", "fox v1", "fox v2"]
    assert len(page.cells) == 12
    col_x = {c.text: c.box[0] for c in cols}
    for cell in page.cells:
        assert cell.box[0] == col_x[f"#{cell.entry.job.seed}"]  # the seed's column
        row = next(r for r in rows if r.text == cell.entry.job.variant)
        assert cell.box[1] == row.box[1]  # the variant's row
        assert cell.box[2] - cell.box[0] >= 64 and cell.box[3] - cell.box[1] == 64
    assert page.title == "demo — 12 images"


def test_matrix_rows_all_but_last_variable_columns_last():
    pairs = [(s, t) for s in ("cyber", "deco") for t in ("dawn", "dusk", "noon")]
    entries = [Entry(job(i, 7, job_id="city", vars=(("style", s), ("time", t))), OK)
               for i, (s, t) in enumerate(pairs)]
    (page,) = imaging.layout("m", entries, box=(64, 64))
    assert [lb.text for lb in page.labels if lb.kind == "column"] == ["dawn", "dusk", "noon"]
    assert [lb.text for lb in page.labels if lb.kind == "row"] == ["city cyber", "city deco"]


def test_one_seed_matrix_beside_a_seed_sweep_still_puts_its_last_axis_across():
    entries = sweep(2, 2)  # fox: variants down, seeds across
    pairs = [(s, t) for s in ("cyber", "deco") for t in ("dawn", "dusk")]
    entries += [Entry(job(len(entries) + i, 7, job_id="city", vars=(("style", s), ("time", t))),
                      OK) for i, (s, t) in enumerate(pairs)]
    blocks = imaging.grid_blocks(entries)
    assert [(b.columns, [r for r, _ in b.rows]) for b in blocks] == [
        (("#100", "#101"), ["fox v0", "fox v1"]),
        (("dawn", "dusk"), ["city cyber", "city deco"]),
    ]
    (page,) = imaging.layout("m", entries, box=(64, 64))
    city = [c for c in page.cells if c.entry.job.id == "city"]
    assert len({c.box[0] for c in city}) == 2 and len({c.box[1] for c in city}) == 2  # 2 x 2


def test_plain_grid_keeps_plan_order():
    entries = [Entry(job(i, 1, job_id=f"j{i:02}"), OK) for i in range(9)]
    (page,) = imaging.layout("p", entries, box=(50, 50))
    assert not [lb for lb in page.labels if lb.kind != "title"]
    order = sorted(page.cells, key=lambda c: (c.box[1], c.box[0]))
    assert [c.entry.job.index for c in order] == list(range(9))
    assert len({c.box[0] for c in page.cells}) == 3  # a square-ish 3 x 3 grid


def test_pages_split_at_per_page_by_rows():
    entries = sweep(5, 3)  # 15 cells, rows of 3
    pages = imaging.layout("demo", entries, box=(64, 64), per_page=7)
    assert [len(p.cells) for p in pages] == [6, 6, 3]  # whole rows only, never over 7
    assert [p.title for p in pages][1] == "demo — 15 images — page 2/3"
    for p in pages:  # headers repeated on every page, in the same place
        assert [lb.text for lb in p.labels if lb.kind == "column"] == ["#100", "#101", "#102"]
    xs = [sorted({c.box[0] for c in p.cells}) for p in pages]
    assert xs[0] == xs[1] == xs[2]
    assert [c.entry.job.index for p in pages for c in p.cells] == list(range(15))


def test_pages_split_at_pixel_cap():
    entries = sweep(12, 4)
    pages = imaging.layout("demo", entries, box=(100, 100), per_page=1000, max_pixels=400_000)
    assert len(pages) > 2
    for p in pages:
        assert p.size[0] * p.size[1] <= 400_000
        assert len(p.cells) % 4 == 0  # whole rows
        assert sum(lb.kind == "column" for lb in p.labels) == 4
    assert sum(len(p.cells) for p in pages) == 48
    widths = {p.size[0] for p in pages}
    assert len(widths) == 1


def test_wide_sweeps_wrap_columns_with_headers():
    entries = sweep(2, 30)
    pages = imaging.layout("w", entries, box=(40, 40), per_page=1000)
    cols = [lb.text for p in pages for lb in p.labels if lb.kind == "column"]
    assert cols == [f"#{100 + i}" for i in range(30)]  # each seed headed once, in order
    (page,) = pages
    assert page.size[0] < 3 * page.size[1] and page.size[1] < 3 * page.size[0]  # no strip
    bands = {lb.box[1] for lb in pages[0].labels if lb.kind == "column"}
    assert len(bands) == 4  # 30 seeds in 4 bands of 8 (the last 6), each with its headers
    assert sum(len(p.cells) for p in pages) == 60
    huge = imaging.layout("w", sweep(40, 30), box=(40, 40), per_page=10_000)
    for p in huge:  # many variants: 24 columns, then the rest in a second band
        per_band: dict[int, int] = {}
        for lb in p.labels:
            if lb.kind == "column":
                per_band[lb.box[1]] = per_band.get(lb.box[1], 0) + 1
        assert max(per_band.values()) == imaging.MAX_COLUMNS


def test_failed_cell_keeps_its_place():
    ok = sweep(3, 3)
    marked = list(ok)
    marked[4] = Entry(ok[4].job, FAILED, "HTTP 400")
    marked[7] = Entry(ok[7].job, MISSING)
    (a,) = imaging.layout("d", ok, box=(64, 64))
    (b,) = imaging.layout("d", marked, box=(64, 64))
    assert [c.box for c in a.cells] == [c.box for c in b.cells]
    assert b.title == "d — 9 images (1 failed, 1 missing)"


def test_wrap_and_ellipsize_fit_width():
    text = "a very long caption with many words that will never fit in one small cell at all"
    lines = imaging.wrap(text, 120, 14, 2)
    assert len(lines) == 2 and lines[1].endswith("…")
    assert all(imaging.font(14).getlength(line) <= 120 for line in lines)
    assert imaging.ellipsize("short", 200, 14) == "short"


# -- rendering --------------------------------------------------------------------------


def _render(entries, size_of, **kw):
    pages = imaging.layout("render", entries, box=(96, 96), **kw)
    images = {e.job.key: Image.new("RGB", size_of(e), colour(e.job.index)) for e in entries}
    loaded = []

    def load(e):
        loaded.append(e.job.key)
        return images[e.job.key].copy()

    return pages, [imaging.render(p, load) for p in pages], loaded


def test_render_puts_each_image_in_its_cell_with_headers_and_no_captions():
    entries = sweep(2, 3)
    entries[4] = Entry(entries[4].job, FAILED, "HTTP 400: bad prompt")
    entries[5] = Entry(entries[5].job, MISSING)
    pages, sheets, loaded = _render(entries, lambda e: (96, 96))
    (page,), (sheet,) = pages, sheets
    assert sheet.size == page.size and sheet.mode == "RGB"
    assert len(loaded) == 4  # marked cells load nothing
    for cell in page.cells:
        px = sheet.getpixel(centre(cell.box))
        if cell.entry.state == OK:
            assert px == colour(cell.entry.job.index)
        else:
            assert px not in [colour(e.job.index) for e in entries]
        # the row and column headers name the cell: no caption under it
        assert cell.caption[1] == cell.caption[3] == cell.box[3]
    failed = next(c for c in page.cells if c.entry.state == FAILED)
    area = sheet.crop(failed.box)
    data = area.tobytes()
    reds = sum(1 for i in range(0, len(data), 3) if data[i] > data[i + 1] + 20)
    assert reds > area.width * area.height // 2  # red-tinted, hatched
    for lb in page.labels:
        band = sheet.crop(lb.box)
        blank = Image.new("RGB", band.size, band.getpixel((0, 0)))
        assert ImageChops.difference(band, blank).getbbox() is not None, lb


def test_a_plain_grid_captions_each_cell():
    entries = [Entry(job(i, 1, job_id=f"j{i}"), OK) for i in range(4)]
    (page,), (sheet,), _ = _render(entries, lambda e: (96, 96))
    assert [lb.kind for lb in page.labels] == ["title"]  # no headers: captions name them
    for cell in page.cells:
        assert cell.caption[3] - cell.caption[1] > 20
        assert sheet.crop(cell.caption).convert("L").getextrema()[0] < 128  # text drawn


def test_mixed_aspect_ratios_are_centred_in_equal_boxes():
    wide = Entry(job(0, 1, job_id="a", ratio="16:9"), OK)
    tall = Entry(job(1, 1, job_id="b", ratio="9:16"), OK)
    sq = Entry(job(2, 1, job_id="c"), OK)
    sizes = {0: (96, 54), 1: (54, 96), 2: (96, 96)}
    (page,), (sheet,), _ = _render([wide, tall, sq], lambda e: sizes[e.job.index])
    boxes = [c.box for c in page.cells]
    assert len({(b[2] - b[0], b[3] - b[1]) for b in boxes}) == 1
    for cell in page.cells:
        assert sheet.getpixel(centre(cell.box)) == colour(cell.entry.job.index)
    wide_box = page.cells[0].box
    assert sheet.getpixel((centre(wide_box)[0], wide_box[1] + 2)) == imaging.CELL_BACKGROUND


def test_render_shrinks_pictures_larger_than_the_box():
    entries = [Entry(job(0, 1), OK)]
    (page,), (sheet,), _ = _render(entries, lambda e: (800, 400))
    box = page.cells[0].box
    assert sheet.getpixel(centre(box)) == colour(0)
    assert sheet.getpixel((centre(box)[0], box[1] + 2)) == imaging.CELL_BACKGROUND

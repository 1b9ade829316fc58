"""PURE Pillow: thumbnails, contact-sheet layout and rendering.

Images in, images out; nothing here reads or writes files. Layout is computed from the
plan alone (no pixels), so pages, cell boxes and headers can be tested without images,
and rendering pastes one thumbnail at a time so memory stays bounded for large sheets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ..planning import apispec
from ..planning.plan import Job
from . import fonts

JPEG_QUALITY = 85
#: Cells of a sheet when thumbnails are off: images are scaled into this box on the fly.
SHEET_BOX = 256
#: Pixels per sheet page: 24 Mpx of RGB is 72 MB, far below Pillow's MAX_IMAGE_PIXELS
#: (89 Mpx) and small enough to keep rendering of 1,000+ cells under ~150 MB.
MAX_SHEET_PIXELS = 24_000_000
#: Widest grid before a block's columns wrap into a second band (headers repeated).
MAX_COLUMNS = 24

MARGIN = 16
GAP = 8
TITLE_SIZE = 24
HEADER_SIZE = 16
CAPTION_SIZE = 14
CAPTION_LINES = 2
BRIEF_LINES = 2  # a longer brief is cut with an ellipsis: the heading names it, the lock holds it
MIN_CELL_WIDTH = 112  # narrower cells cannot hold a legible caption

BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (240, 240, 240)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)
HEADER_BACKGROUND = (228, 232, 240)
FAILED_FILL = (252, 226, 226)
FAILED_INK = (176, 32, 32)
MISSING_FILL = (226, 226, 226)
MISSING_INK = (110, 110, 110)
# Decisions from the picks file, drawn on the cell so a sheet shows the team's choice.
PICK_INK = (22, 140, 60)
REJECT_INK = (190, 30, 30)
STALE_INK = (200, 120, 0)
RATING_BACKGROUND = (32, 32, 32)
STAR_INK = (250, 196, 24)
BADGE_TEXT = (255, 255, 255)
MARK_WIDTH = 5  # border of a decided cell, px
REJECT_DIM = 0.6  # how far a rejected picture fades toward the background
PICK = "pick"
REJECT = "reject"
STALE = "stale"
_MARK_INK = {PICK: PICK_INK, REJECT: REJECT_INK, STALE: STALE_INK}
_MARK_WORD = {PICK: "PICK", REJECT: "REJECT", STALE: "STALE"}

OK = "ok"
FAILED = "failed"
MISSING = "missing"


# ---------------------------------------------------------------------------------------
# Thumbnails


def flatten(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """An RGB copy of `img` with any transparency laid over `background` (white)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", img.size, background)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img if img.mode == "RGB" else img.convert("RGB")


def thumbnail(img: Image.Image, longest: int) -> Image.Image:
    """An RGB thumbnail whose longest side is `longest` (never enlarged), alpha flattened.

    Fast paths: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (`draft`), any image is first
    shrunk by an integer factor (`reduce`, via `reducing_gap`) and only the last step
    uses LANCZOS.
    """
    w, h = img.size
    scale = min(1.0, longest / max(w, h))
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if img.format == "JPEG":
        img.draft("RGB", target)
    if img.mode in ("P", "PA"):
        # Resizing a palette image would fall back to nearest neighbour.
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    source = img
    if img.size != target:
        # resize premultiplies alpha itself, so flattening after it is exact and cheaper.
        img = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = flatten(img)
    # Never hand back the (lazily loaded) input itself: its file may be closed next.
    return out.copy() if out is source else out


def fit_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled down (never up) to fit inside `box`, aspect ratio kept."""
    w, h = size
    scale = min(1.0, box[0] / w, box[1] / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def thumb_size(job: Job, longest: int) -> tuple[int, int]:
    """The thumbnail size a job's image will have, from its request alone."""
    return fit_size(apispec.pixel_size(job.request), (longest, longest))


# ---------------------------------------------------------------------------------------
# Contact-sheet layout (pure geometry)


@dataclass(frozen=True, slots=True)
class Entry:
    """One job as post-processing sees it: its state and what to show for it."""

    job: Job
    state: str  # ok | failed | missing
    reason: str | None = None  # why it failed
    thumb: str | None = None  # POSIX path of the picture to show, relative to the output root
    thumb_size: tuple[int, int] | None = None  # that picture's size in px (for index.html)
    pick: str = ""  # the picks file's word on it: pick | reject | stale | "" (undecided)
    rating: int | None = None  # 1..5 from the picks file (None when stale or unrated)


Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)


@dataclass(frozen=True, slots=True)
class Cell:
    """Where one entry goes on a page: the image box and the caption box under it (empty,
    zero pixels tall, when a row and a column header name the cell)."""

    entry: Entry
    box: Box
    caption: Box


@dataclass(frozen=True, slots=True)
class Label:
    """A piece of text on a page: the title, a brief, a column header or a row header."""

    kind: str  # title | brief | column | row
    text: str
    box: Box


@dataclass(frozen=True, slots=True)
class Page:
    """One contact-sheet page: its size, cells and texts."""

    number: int  # 1-based
    pages: int
    size: tuple[int, int]
    cells: tuple[Cell, ...]
    labels: tuple[Label, ...]

    @property
    def title(self) -> str:
        """The page's title text."""
        return next(lb.text for lb in self.labels if lb.kind == "title")


@dataclass(slots=True)
class Block:
    """Rows that share column headers; `columns` empty for a plain (header-less) grid.
    A job whose prompts were written from a brief is a block of its own, headed by it."""

    columns: tuple[str, ...]
    rows: list[tuple[str, list[Entry | None]]]
    job: str = ""  # the job of `brief`
    brief: str = ""  # the brief its prompts were written from; "" for any other block


def brief_heading(block: Block) -> str:
    """What heads a block of one job's brief: 'poster — brief: A travel poster...'; ""."""
    return f"{block.job} — brief: {block.brief}" if block.brief else ""


def grid_mode(entries: Sequence[Entry]) -> str:
    """'seeds' (variants x seeds), 'matrix' (variables x last variable) or 'plain'."""
    variants: dict[str, int] = {}
    for e in entries:
        variants[e.job.variant] = variants.get(e.job.variant, 0) + 1
    if any(n > 1 for n in variants.values()):
        return "seeds"
    if any(e.job.vars for e in entries):
        return "matrix"
    return "plain"


def _runs(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Consecutive entries of one job id."""
    runs: list[list[Entry]] = []
    for e in entries:
        if runs and runs[-1][0].job.id == e.job.id:
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs


def _block(entries: list[Entry], row_of: Callable[[Job], str],
           col_of: Callable[[Job], str]) -> Block:
    rows: dict[str, dict[str, Entry]] = {}
    cols: dict[str, None] = {}
    for e in entries:
        rows.setdefault(row_of(e.job), {})[col_of(e.job)] = e
        cols[col_of(e.job)] = None
    columns = tuple(cols)
    return Block(columns, [(r, [cells.get(c) for c in columns]) for r, cells in rows.items()])


def grid_blocks(entries: Sequence[Entry], briefs: Mapping[str, str] | None = None
                ) -> list[Block]:
    """Group entries into header blocks: rows x columns, the plan's order kept.

    `briefs` (job id -> brief, Plan.briefs) makes each of those jobs a block of its own,
    carrying its brief, even a job of one image: its group is headed by what it was
    written from, and never shares a header with another job's rows.
    """
    briefs = briefs or {}
    mode = grid_mode(entries)
    blocks: list[Block] = []
    loose: list[Entry] = []  # single images with nothing to line up against

    def flush() -> None:
        if loose:
            blocks.append(Block((), [("", list(loose))]))
            loose.clear()

    if mode == "plain":
        return [Block((), [("", list(entries))])] if entries else []
    for run in _runs(entries):
        # Each job is laid out by its own shape: seeds across when it has several, else its
        # last matrix axis across (a one-seed matrix beside seed sweeps is still a grid).
        if mode == "seeds" and grid_mode(run) == "seeds":
            block = _block(run, lambda j: j.variant, lambda j: f"#{j.seed}")
        elif run[0].job.vars:
            block = _block(
                run,
                lambda j: " ".join([j.id, *(v for _, v in j.vars[:-1])]),
                lambda j: j.vars[-1][1],
            )
        else:
            block = Block((), [])
        brief = briefs.get(run[0].job.id, "")
        if brief:
            if len(block.columns) <= 1 and len(block.rows) <= 1:
                block = Block((), [("", list(run))])
            block.job, block.brief = run[0].job.id, brief
            flush()
            blocks.append(block)
            continue
        if len(block.columns) <= 1 and len(block.rows) <= 1:
            loose.extend(run)
            continue
        flush()
        if blocks and blocks[-1].columns == block.columns and not blocks[-1].brief:
            blocks[-1].rows.extend(block.rows)  # same seeds or values: one header for both
        else:
            blocks.append(block)
    flush()
    return blocks


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The face Latin text is drawn in at `size` px (the system's sans-serif, else bundled)."""
    return fonts.primary(size)


_STAND_INS = {"—": "-", "–": "-", "×": "x", "“": '"', "”": '"', "‘": "'", "’": "'"}


def drawable(text: str) -> str:
    """`text` with characters no available font has replaced by look-alikes (— by -)."""
    if text.isascii():
        return text
    return "".join(_STAND_INS.get(c, c) if not fonts.covered(c) else c for c in text)


def _text_width(text: str, size: int) -> float:
    return fonts.measure(text, size)


def ellipsize(text: str, width: int, size: int) -> str:
    """`text` cut with an ellipsis so it fits in `width` px."""
    if _text_width(text, size) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if _text_width(text[:mid].rstrip() + "…", size) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


#: Han, kana and full-width forms: a line may break before or after any of them.
_CJK = re.compile("([\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff]"
                  # closing marks and small kana never start a line: they go with the one before
                  "[、。，．：；？！」』）】〕〉》ー々ゝゞヽヾぁぃぅぇぉっゃゅょァィゥェォッャュョ]*)")


def _pieces(text: str) -> list[tuple[str, str]]:
    """Where `text` may break: (separator, piece) pairs; words and each CJK character."""
    out: list[tuple[str, str]] = []
    for word in text.split():
        sep = " "
        for part in _CJK.split(word):
            if part:
                out.append((sep, part))
                sep = ""
    return out


def wrap(text: str, width: int, size: int, lines: int) -> list[str]:
    """`text` wrapped to at most `lines` lines of `width` px, the last ellipsized if cut.

    Lines break at spaces and between CJK characters (which have no spaces between words).
    """
    pieces = _pieces(text)
    out: list[str] = []
    while pieces and len(out) < lines:
        line = pieces.pop(0)[1]
        while pieces and _text_width(line + "".join(pieces[0]), size) <= width:
            line += "".join(pieces.pop(0))
        out.append(line)
    if pieces:
        out[-1] = out[-1] + "".join(sep + part for sep, part in pieces)
    return [ellipsize(line, width, size) for line in out]


def _line_height(size: int) -> int:
    face = font(size)
    # load_default(size=...) gives a FreeTypeFont whenever Pillow has FreeType (>= 10.1)
    ascent, descent = face.getmetrics() if isinstance(face, ImageFont.FreeTypeFont) else (size, 0)
    return ascent + descent + 2


def page_title(name: str, entries: Sequence[Entry], number: int, pages: int) -> str:
    """'name — N images' (with failed/missing counts, and 'k/n' when paged)."""
    n = len(entries)
    failed = sum(e.state == FAILED for e in entries)
    missing = sum(e.state == MISSING for e in entries)
    picked = sum(e.pick == PICK for e in entries)
    rejected = sum(e.pick == REJECT for e in entries)
    text = f"{name} — {n} image{'s' if n != 1 else ''}"
    extra = [f"{failed} failed"] * bool(failed) + [f"{missing} missing"] * bool(missing)
    stale = sum(e.pick == STALE for e in entries)
    extra += [f"{picked} picked"] * bool(picked) + [f"{rejected} rejected"] * bool(rejected)
    extra += [f"{stale} stale"] * bool(stale)
    if extra:
        text += f" ({', '.join(extra)})"
    if pages > 1:
        text += f" — page {number}/{pages}"
    return text


def layout(
    name: str,
    entries: Sequence[Entry],
    *,
    box: tuple[int, int],
    per_page: int = 100,
    max_pixels: int = MAX_SHEET_PIXELS,
    briefs: Mapping[str, str] | None = None,
) -> list[Page]:
    """Pages of cells, headers and titles for `entries`; `box` is the largest picture.

    Every column of a sheet is `box`'s width; each row is as tall as its tallest picture
    (its thumbnail's size, or its request's), so a row of 16:9 images has 16:9 cells
    instead of square ones with bands above and below. A cell under a row and a column
    header is named by them and has no caption; one in a plain grid has its label under it.
    Pages split at `per_page` cells and at `max_pixels`, always between rows, and a block
    continued on a new page repeats its column headers. A failed or missing job keeps its cell.
    A job written from one of `briefs` (job id -> brief) is headed by its brief, across the
    page above its rows, in at most BRIEF_LINES lines (repeated on a new page too).
    """
    if not entries:
        return []
    per_page = max(1, per_page)
    blocks = grid_blocks(entries, briefs)
    headed = [b for b in blocks if b.columns]
    plain_n = sum(len(cells) for b in blocks if not b.columns for _, cells in b.rows)
    # a caption needs MIN_CELL_WIDTH; cells named by headers alone are as wide as the pictures
    cell_w = max(box[0], MIN_CELL_WIDTH) if plain_n else max(box[0], 1)
    cell_h = box[1]
    caption_h = CAPTION_LINES * _line_height(CAPTION_SIZE) + 4
    row_h = cell_h + caption_h + GAP  # the tallest a row can be: for the estimates below
    head_h = _line_height(HEADER_SIZE) + 10
    title_h = _line_height(TITLE_SIZE) + 16
    side = max(box)

    def picture_h(e: Entry) -> int:
        """How tall `e`'s picture is drawn in a column of width cell_w."""
        return fit_size(e.thumb_size or thumb_size(e.job, side), (cell_w, cell_h))[1]

    widest = max((len(b.columns) for b in headed), default=0)
    # Columns a row may have: per_page cells at most, and a row must fit the pixel cap.
    # (two rows, with title and headers, must fit under the pixel cap)
    by_pixels = max(1, (max_pixels // (title_h + head_h + 2 * row_h + MARGIN) - 2 * MARGIN
                        - 300) // (cell_w + GAP))
    cap = max(1, min(per_page, MAX_COLUMNS, by_pixels))
    width_cols = min(cap, widest) if headed else 0
    if plain_n:
        plain_cols = min(cap, max(1, math.ceil(math.sqrt(plain_n * cell_h / max(cell_w, 1)))))
        width_cols = max(width_cols, min(cap, max(plain_cols, widest)))
    row_head_w = 0
    if headed:
        longest = max(_text_width(r, HEADER_SIZE) for b in headed for r, _ in b.rows)
        row_head_w = int(min(max(longest + 16, 120), 280))
        # A few variants with many seeds make a strip far wider than tall: wrap the seeds
        # into bands (headers repeated) of about equal width, for a roughly square sheet.
        n_rows = sum(len(b.rows) for b in headed)
        headed_h = cell_h + GAP  # a headed row has no caption
        full_w = row_head_w + width_cols * (cell_w + GAP)
        full_h = title_h + len(headed) * head_h + n_rows * headed_h
        if full_w > 3 * full_h:
            n_cells = sum(len(b.rows) * len(b.columns) for b in headed)
            target = max(2, math.ceil(math.sqrt(n_cells * headed_h / (cell_w + GAP))))
            if target < width_cols:
                width_cols = math.ceil(widest / math.ceil(widest / target))

    width = MARGIN * 2 + row_head_w + width_cols * cell_w + (width_cols - 1) * GAP
    # A block's brief heading, as many lines as it takes across the page (at most
    # BRIEF_LINES), and its height with a little room above it; 0 for a block without one.
    headings = [brief_heading(b) for b in blocks]
    brief_hs = [len(wrap(drawable(text), width - 2 * MARGIN, HEADER_SIZE, BRIEF_LINES))
                * _line_height(HEADER_SIZE) + 10 if text else 0 for text in headings]

    # Flatten blocks into bands: (column headers or (), row header, cells, band id, picture
    # height, caption height, block), cut to width.
    bands: list[tuple[tuple[str, ...], str, list[Entry | None], int, int, int, int]] = []
    band_id = 0

    def add(cols: tuple[str, ...], head: str, cells: list[Entry | None], bid: int,
            blk: int) -> None:
        height = max(picture_h(e) for e in cells if e is not None)
        # header-less cells are named by their caption; headed ones by their headers alone
        bands.append((cols, head, cells, bid, height, 0 if cols else caption_h, blk))

    for blk, b in enumerate(blocks):
        if b.columns:
            for start in range(0, len(b.columns), width_cols):
                cols = b.columns[start:start + width_cols]
                for r, cells in b.rows:
                    part = cells[start:start + width_cols]
                    if any(e is not None for e in part):
                        add(cols, r, part, band_id, blk)
                band_id += 1
        else:
            flat = [e for _, cells in b.rows for e in cells]
            for start in range(0, len(flat), width_cols):
                add((), "", list(flat[start:start + width_cols]), band_id, blk)
            band_id += 1

    max_h = max(max_pixels // width, title_h + max(brief_hs) + head_h + row_h + MARGIN)

    # Split rows into pages.
    pages_rows: list[list[int]] = [[]]
    used_cells = 0
    used_h = title_h
    last_band = last_block = -1
    for i, (cols, _r, cells, bid, pic_h, cap_h, blk) in enumerate(bands):
        n = sum(c is not None for c in cells)
        extra = ((brief_hs[blk] if blk != last_block else 0)
                 + (head_h if cols and bid != last_band else 0) + pic_h + cap_h + GAP)
        if pages_rows[-1] and (used_cells + n > per_page or used_h + extra + MARGIN > max_h):
            pages_rows.append([])
            used_cells, used_h, last_band, last_block = 0, title_h, -1, -1
            extra = brief_hs[blk] + (head_h if cols else 0) + pic_h + cap_h + GAP
        pages_rows[-1].append(i)
        used_cells += n
        used_h += extra
        last_band, last_block = bid, blk

    pages: list[Page] = []
    total = len(pages_rows)
    for number, idxs in enumerate(pages_rows, 1):
        cells_out: list[Cell] = []
        labels: list[Label] = []
        y = title_h
        last_band = last_block = -1
        x0 = MARGIN + row_head_w
        for i in idxs:
            cols, rhead, cells, bid, pic_h, cap_h, blk = bands[i]
            if brief_hs[blk] and blk != last_block:
                labels.append(Label("brief", headings[blk],
                                    (MARGIN, y + 6, width - MARGIN, y + brief_hs[blk] - 4)))
                y += brief_hs[blk]
            last_block = blk
            if cols and bid != last_band:
                for c, text in enumerate(cols):
                    x = x0 + c * (cell_w + GAP)
                    labels.append(Label("column", text, (x, y, x + cell_w, y + head_h - 4)))
                y += head_h
            last_band = bid
            if rhead:
                labels.append(Label("row", rhead, (MARGIN, y, MARGIN + row_head_w - 8, y + pic_h)))
            for c, e in enumerate(cells):
                if e is None:
                    continue
                x = x0 + c * (cell_w + GAP)
                cells_out.append(Cell(e, (x, y, x + cell_w, y + pic_h),
                                      (x, y + pic_h, x + cell_w, y + pic_h + cap_h)))
            y += pic_h + cap_h + GAP
        height = y - GAP + MARGIN
        title = page_title(name, entries, number, total)
        labels.insert(0, Label("title", title, (MARGIN, MARGIN // 2, width - MARGIN, title_h)))
        pages.append(Page(number, total, (width, height), tuple(cells_out), tuple(labels)))
    return pages


# ---------------------------------------------------------------------------------------
# Rendering


def _centred_text(sheet: Image.Image, box: Box, lines: list[str], size: int,
                  fill: tuple[int, int, int]) -> None:
    lh = _line_height(size)
    top = box[1] + max(0, (box[3] - box[1] - lh * len(lines)) // 2)
    for k, line in enumerate(lines):
        w = _text_width(line, size)
        fonts.draw_text(sheet, (box[0] + (box[2] - box[0] - w) / 2, top + k * lh), line, size,
                        fill)


def _mark(sheet: Image.Image, box: Box, state: str, reason: str | None) -> None:
    """A hatched cell saying why there is no image."""
    draw = ImageDraw.Draw(sheet)
    fill, ink = (FAILED_FILL, FAILED_INK) if state == FAILED else (MISSING_FILL, MISSING_INK)
    left, top, right, bottom = box
    draw.rectangle((left, top, right - 1, bottom - 1), fill=fill, outline=ink)
    step = 14
    for d in range(-(bottom - top), right - left, step):
        # 45-degree hatching clipped to the box
        x1, y1 = left + max(d, 0), top + max(-d, 0)
        span = min(right - x1, bottom - y1)
        if span > 0:
            draw.line((x1, y1, x1 + span - 1, y1 + span - 1), fill=tuple(
                (a + b) // 2 for a, b in zip(fill, ink, strict=True)), width=1)
    lines = [state]
    if reason:
        lines += wrap(drawable(reason), right - left - 16, CAPTION_SIZE, 3)
    pad = 6
    lh = _line_height(CAPTION_SIZE)
    h = _line_height(HEADER_SIZE) + lh * (len(lines) - 1) + pad * 2
    mid = (top + bottom) // 2
    panel = (left + 6, mid - h // 2, right - 7, mid + h // 2)
    draw.rectangle(panel, fill=fill)
    _centred_text(sheet, (panel[0], panel[1] + pad, panel[2], panel[1] + pad + _line_height(
        HEADER_SIZE)), [state], HEADER_SIZE, ink)
    if len(lines) > 1:
        y = panel[1] + pad + _line_height(HEADER_SIZE)
        _centred_text(sheet, (panel[0], y, panel[2], y + lh * (len(lines) - 1)), lines[1:],
                      CAPTION_SIZE, ink)


def _star(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float,
          fill: tuple[int, int, int]) -> None:
    """A five-pointed star drawn as a polygon (the bundled font has no star glyph)."""
    cx, cy = centre
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        a = math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(a), cy - r * math.sin(a)))
    draw.polygon(points, fill=fill)


def _decision(sheet: Image.Image, draw: ImageDraw.ImageDraw, box: Box, e: Entry) -> None:
    """Mark a picked, rejected or stale cell: a coloured border and a badge with its word and
    rating; a rejected picture is faded too. An undecided cell only shows a rating, if any."""
    left, top, right, bottom = box
    ink = _MARK_INK.get(e.pick)
    if e.pick == REJECT:
        region = sheet.crop(box)
        sheet.paste(Image.blend(region, Image.new("RGB", region.size, BACKGROUND), REJECT_DIM),
                    (left, top))
    if ink is not None:
        for k in range(MARK_WIDTH):
            draw.rectangle((left + k, top + k, right - 1 - k, bottom - 1 - k), outline=ink)
    size = CAPTION_SIZE
    lh = _line_height(size)
    pad = 5
    x = left
    if ink is not None:
        word = _MARK_WORD[e.pick]
        w = int(_text_width(word, size)) + 2 * pad
        draw.rectangle((x, top, x + w - 1, top + lh + 4), fill=ink)
        draw.text((x + pad, top + 3), word, font=font(size), fill=BADGE_TEXT)
        x += w
    if e.rating is not None and e.pick != STALE:
        digit = str(e.rating)
        w = int(lh + _text_width(digit, size)) + 2 * pad
        draw.rectangle((x, top, x + w - 1, top + lh + 4), fill=RATING_BACKGROUND)
        _star(draw, (x + pad + lh / 2 - 1, top + 2 + lh / 2), lh / 2 - 1, STAR_INK)
        draw.text((x + pad + lh, top + 3), digit, font=font(size), fill=BADGE_TEXT)


def render(page: Page, load: Callable[[Entry], Image.Image | None]) -> Image.Image:
    """Draw `page`; `load(entry)` gives a job's picture (closed after pasting) or None."""
    sheet = Image.new("RGB", page.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for lb in page.labels:
        left, top, right, bottom = lb.box
        text = drawable(lb.text)
        if lb.kind == "title":
            fonts.draw_text(sheet, (left, top + 4), ellipsize(text, right - left, TITLE_SIZE),
                            TITLE_SIZE, TEXT)
        elif lb.kind == "brief":  # left-aligned, wrapped in its lines, cut with an ellipsis
            lh = _line_height(HEADER_SIZE)
            for k, line in enumerate(wrap(text, right - left, HEADER_SIZE,
                                          max(1, (bottom - top) // lh))):
                fonts.draw_text(sheet, (left, top + k * lh), line, HEADER_SIZE, TEXT)
        elif lb.kind == "column":
            draw.rectangle((left, top, right - 1, bottom - 1), fill=HEADER_BACKGROUND)
            _centred_text(sheet, lb.box, [ellipsize(text, right - left - 8, HEADER_SIZE)],
                          HEADER_SIZE, TEXT)
        else:
            lines = wrap(text, right - left - 8, HEADER_SIZE,
                         max(1, (bottom - top) // _line_height(HEADER_SIZE)))
            draw.rectangle((left, top, right - 1, bottom - 1), fill=HEADER_BACKGROUND)
            _centred_text(sheet, lb.box, lines, HEADER_SIZE, TEXT)
    for cell in page.cells:
        left, top, right, bottom = cell.box
        e = cell.entry
        picture = load(e) if e.state == OK else None
        if picture is None:
            state = e.state if e.state != OK else FAILED
            reason = e.reason if e.state != OK else "image unreadable"
            _mark(sheet, cell.box, state, reason)
        else:
            with picture:
                draw.rectangle((left, top, right - 1, bottom - 1), fill=CELL_BACKGROUND)
                box = (right - left, bottom - top)
                if picture.width > box[0] or picture.height > box[1]:
                    fitted = thumbnail(picture, max(box))
                    if fitted.width > box[0] or fitted.height > box[1]:
                        fitted = fitted.resize(fit_size(fitted.size, box),
                                               Image.Resampling.LANCZOS)
                else:
                    fitted = flatten(picture)
                x = left + (box[0] - fitted.width) // 2
                y = top + (box[1] - fitted.height) // 2
                sheet.paste(fitted, (x, y))
                del fitted
        if e.pick or e.rating is not None:
            _decision(sheet, draw, cell.box, e)
        if cell.caption[3] <= cell.caption[1]:
            continue  # named by its headers: each image is labelled once
        lines = wrap(drawable(e.job.label), cell.caption[2] - cell.caption[0] - 4, CAPTION_SIZE,
                     CAPTION_LINES)
        cy = cell.caption[1] + 2
        for k, line in enumerate(lines):
            w = _text_width(line, CAPTION_SIZE)
            fonts.draw_text(sheet, (left + (right - left - w) / 2,
                                    cy + k * _line_height(CAPTION_SIZE)),
                            line, CAPTION_SIZE, MUTED if e.state != OK else TEXT)
    return sheet


__all__ = [
    "FAILED",
    "JPEG_QUALITY",
    "MAX_SHEET_PIXELS",
    "MISSING",
    "OK",
    "PICK",
    "REJECT",
    "SHEET_BOX",
    "STALE",
    "Block",
    "Cell",
    "Entry",
    "Label",
    "Page",
    "brief_heading",
    "ellipsize",
    "fit_size",
    "flatten",
    "font",
    "grid_blocks",
    "grid_mode",
    "layout",
    "page_title",
    "render",
    "thumb_size",
    "thumbnail",
    "wrap",
]

"""Text in every script: which font draws each character, in which order, and how wide.

No single font covers Latin, CJK, Hebrew, Arabic and emoji, so a line is drawn from a chain
of faces: the system's sans-serif fonts in the order fontconfig ranks them (`fc-match
--sort`, asked once per process), then Pillow's bundled font, which is all there is
without fontconfig and covers ASCII and a few signs only. Each grapheme cluster (a base
character with its combining marks, an emoji sequence) goes to the first face that has all
its characters; punctuation, digits and spaces stay in the face of the text before them, so
a Hebrew phrase keeps its own spaces. Right-to-left text is put in display order by the Unicode
bidirectional algorithm (`levels`), and each run is shaped by libraqm when Pillow has it
(Arabic joining forms, mark placement, ligatures). Colour emoji fonts only come in fixed
bitmap sizes: their runs are drawn at the font's size and scaled to the text's.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import subprocess
import unicodedata
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image, ImageDraw, ImageFont, features

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]
T = TypeVar("T")

#: fontconfig's pattern for the faces to draw with, best first.
FONTCONFIG_PATTERN = "sans-serif"
#: Font formats FreeType renders at any size (bitmap-only formats are left out).
_SCALABLE_FORMATS = {"TrueType", "CFF"}
#: Sizes colour bitmap fonts are made in (Noto Color Emoji: 109; Apple Color Emoji: 160...).
_STRIKES = (109, 160, 137, 128, 96, 64, 48, 40, 32, 20)
#: A code point no font maps (a noncharacter): what a face draws for a glyph it lacks.
_MISSING = "\U0010fffe"

RAQM = features.check("raqm")
#: How Pillow lays text out: libraqm (bidi, shaping) when it has it, else one glyph per char.
LAYOUT = ImageFont.Layout.RAQM if RAQM else ImageFont.Layout.BASIC


# ---------------------------------------------------------------------------------------
# Faces


@dataclass(frozen=True, eq=False)
class Face:
    """One font file (`path` None: Pillow's bundled font) and the characters it maps."""

    path: str | None
    index: int = 0
    color: bool = False
    #: inclusive ranges of code points, flattened: start0, end0, start1, end1, ...
    #: (empty: unknown, so each character is tried by drawing it)
    ranges: tuple[int, ...] = ()
    _starts: tuple[int, ...] = field(default=(), repr=False)

    def covers(self, ch: str) -> bool:
        """Whether this face has a glyph for the character `ch`."""
        if not self.ranges:
            return _draws(self, ch)
        cp = ord(ch)
        i = bisect.bisect_right(self._starts, cp) - 1
        return i >= 0 and cp <= self.ranges[2 * i + 1]


def _face(path: str | None, index: int = 0, color: bool = False,
          ranges: tuple[int, ...] = ()) -> Face:
    return Face(path, index, color, ranges, ranges[0::2])


BUNDLED = _face(None)

_RANGE = re.compile(r"([0-9a-f]+)(?:-([0-9a-f]+))?")


def parse_charset(text: str) -> tuple[int, ...]:
    """fontconfig's charset ('20-7e a0-377 5d0') as flattened ranges; () if unreadable."""
    out: list[int] = []
    for token in text.split():
        m = _RANGE.fullmatch(token.lower())
        if not m:
            return ()
        start = int(m.group(1), 16)
        end = int(m.group(2), 16) if m.group(2) else start
        if end < start or (out and start <= out[-1]):
            return ()
        out += (start, end)
    return tuple(out)


def _fontconfig_faces() -> list[Face]:
    """The system's sans-serif faces, best first, each adding coverage; [] without fontconfig."""
    fmt = "%{file}\\t%{index}\\t%{color}\\t%{fontformat}\\t%{charset}\\n"
    try:
        done = subprocess.run(["fc-match", "--sort", f"--format={fmt}", FONTCONFIG_PATTERN],
                              capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []  # no fontconfig (macOS, Windows, a slim container): the bundled font alone
    if done.returncode != 0:
        return []
    faces: list[Face] = []
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or not parts[0] or parts[3] not in _SCALABLE_FORMATS:
            continue
        path, index, color, _fmt, charset = parts
        try:
            number = int(index or 0)
        except ValueError:
            continue
        faces.append(_face(path, number, color == "True", parse_charset(charset)))
    return faces


@functools.cache
def faces() -> tuple[Face, ...]:
    """Every face text is drawn with, in the order they are tried (looked up once)."""
    return (*_fontconfig_faces(), BUNDLED)


@functools.cache
def _strike(face: Face) -> int | None:
    """The pixel size a colour bitmap face loads at, or None if it loads at none."""
    for size in _STRIKES:
        try:
            ImageFont.truetype(face.path or "", size, index=face.index, layout_engine=LAYOUT)
        except OSError:
            continue
        return size
    return None


@functools.lru_cache(maxsize=256)
def _load(face: Face, size: int) -> Font | None:
    """`face` at `size` px (a colour face at its bitmap size); None if it cannot be loaded."""
    if face.path is None:
        return ImageFont.load_default(size=size)
    if face.color:
        strike = _strike(face)
        size = strike if strike else size
    try:
        return ImageFont.truetype(face.path, size, index=face.index, layout_engine=LAYOUT)
    except OSError:
        return None


@functools.cache
def _usable(face: Face) -> bool:
    """Whether Pillow can load `face` (checked when it is first needed, not for all)."""
    return _load(face, 16) is not None


@functools.cache
def _first() -> Face:
    """The face Latin text is drawn in: the first loadable text (not colour) face."""
    return next((f for f in faces() if not f.color and _usable(f)), BUNDLED)


def primary(size: int) -> Font:
    """The first face of the chain at `size` px: the one Latin text is drawn in."""
    return _load(_first(), size) or ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=8192)
def _draws(face: Face, ch: str) -> bool:
    """Whether `face` draws `ch` as something other than its missing-glyph box."""
    font = _load(face, 16)
    if font is None:
        return False
    if ch.isspace():
        return True
    return bytes(font.getmask(ch)) != bytes(font.getmask(_MISSING))


@functools.lru_cache(maxsize=8192)
def covered(ch: str) -> bool:
    """Whether any face of the chain has a glyph for `ch`."""
    return _ignorable(ch) or any(f.covers(ch) and _usable(f) for f in faces())


# ---------------------------------------------------------------------------------------
# Clusters and the face for each


def _ignorable(ch: str) -> bool:
    # Joiners, variation selectors, tags and direction marks draw nothing by themselves.
    return unicodedata.category(ch) == "Cf" or 0xFE00 <= ord(ch) <= 0xFE0F


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _extends(cluster: str, ch: str) -> bool:
    """Whether `ch` belongs to the cluster before it rather than starting a new one."""
    cp = ord(ch)
    if unicodedata.category(ch) in ("Mn", "Mc", "Me"):  # combining marks, keycap, VS16
        return True
    if cp in (0x200C, 0x200D) or 0xE0020 <= cp <= 0xE007F or 0x1F3FB <= cp <= 0x1F3FF:
        return True  # joiners, tag sequences (subdivision flags), skin tones
    if cluster.endswith("\u200d"):
        return True  # the next part of a joined emoji sequence
    # Two regional indicators make one flag.
    return _regional(ch) and len(cluster) == 1 and _regional(cluster)


def clusters(text: str) -> list[str]:
    """`text` cut into grapheme clusters: a character with its marks, an emoji sequence."""
    out: list[str] = []
    for ch in text:
        if out and _extends(out[-1], ch):
            out[-1] += ch
        else:
            out.append(ch)
    return out


def _emoji(cluster: str) -> bool:
    """Whether a cluster asks for emoji presentation (pictographs, VS16, keycaps, flags)."""
    return any(0x1F000 <= ord(c) <= 0x1FAFF or c in "\ufe0f\u20e3" for c in cluster)


def _neutral(cluster: str) -> bool:
    """Spaces, punctuation, symbols and digits: drawn in the face of the text before them."""
    return unicodedata.category(cluster[0])[0] in "ZPSNC" and not _emoji(cluster)


@functools.lru_cache(maxsize=16384)
def _face_for(cluster: str) -> Face:
    chain = faces()
    # Colour faces draw emoji only: their letters and digits are not meant for text.
    colour = [f for f in chain if f.color]
    text = [f for f in chain if not f.color]
    order = colour + text if _emoji(cluster) else text + colour
    chars = [c for c in cluster if not _ignorable(c)]
    # A face is loaded (to see that Pillow can) only once it is a candidate: loading all
    # of a system's fonts would cost a second and tens of MB.
    for face in order:
        if all(face.covers(c) for c in chars) and _usable(face):
            return face
    # No face has the marks too: the one with the base character, else the missing-glyph box.
    return next((f for f in order if chars and f.covers(chars[0]) and _usable(f)), _first())


# ---------------------------------------------------------------------------------------
# Bidirectional order (Unicode Standard Annex #9, for a plain line of text)

_NEUTRAL_TYPES = {"B", "S", "WS", "ON"}


def levels(text: str) -> tuple[list[int], int]:
    """(embedding level of each character, paragraph level) of one line of text.

    UAX #9 rules P2-P3, W1-W7, N1-N2, I1-I2 and L1 over the line as one run: explicit
    embeddings and isolates are rare in prompts and are treated as neutral characters, and
    brackets resolve as other neutrals do (no N0 pairing).
    """
    types = [unicodedata.bidirectional(c) or "L" for c in text]
    base = 0
    for t in types:  # P2, P3: the first strong character sets the paragraph's direction
        if t == "L":
            break
        if t in ("R", "AL"):
            base = 1
            break
    sos = "R" if base else "L"
    types = ["ON" if t in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")
             else t for t in types]
    n = len(types)
    for i in range(n):  # W1: marks (and joiners) take the type of what they mark
        if types[i] in ("NSM", "BN"):
            types[i] = types[i - 1] if i else sos
    last_strong = sos
    for i in range(n):  # W2: European digits after Arabic letters are Arabic numbers
        t = types[i]
        if t in ("L", "R", "AL"):
            last_strong = t
        elif t == "EN" and last_strong == "AL":
            types[i] = "AN"
    types = ["R" if t == "AL" else t for t in types]  # W3
    for i in range(1, n - 1):  # W4: one separator between two numbers of a kind
        a, t, b = types[i - 1], types[i], types[i + 1]
        if t == "ES" and a == b == "EN" or t == "CS" and a == b and a in ("EN", "AN"):
            types[i] = a
    i = 0
    while i < n:  # W5: terminators (%, currency) next to European digits
        if types[i] != "ET":
            i += 1
            continue
        j = i
        while j < n and types[j] == "ET":
            j += 1
        if (i and types[i - 1] == "EN") or (j < n and types[j] == "EN"):
            types[i:j] = ["EN"] * (j - i)
        i = j
    types = ["ON" if t in ("ES", "ET", "CS") else t for t in types]  # W6
    last_strong = sos
    for i in range(n):  # W7: European digits after Latin letters are left-to-right
        if types[i] in ("L", "R"):
            last_strong = types[i]
        elif types[i] == "EN" and last_strong == "L":
            types[i] = "L"
    i = 0
    while i < n:  # N1, N2: neutrals between like directions take it, others the paragraph's
        if types[i] not in _NEUTRAL_TYPES:
            i += 1
            continue
        j = i
        while j < n and types[j] in _NEUTRAL_TYPES:
            j += 1
        before = sos if i == 0 else ("R" if types[i - 1] in ("R", "EN", "AN") else "L")
        after = sos if j == n else ("R" if types[j] in ("R", "EN", "AN") else "L")
        types[i:j] = [before if before == after else sos] * (j - i)
        i = j
    out = []
    for t in types:  # I1, I2
        if base == 0:
            out.append({"R": 1, "AN": 2, "EN": 2}.get(t, 0))
        else:
            out.append({"L": 2, "AN": 2, "EN": 2}.get(t, 1))
    k = n
    while k and unicodedata.bidirectional(text[k - 1]) in ("WS", "S", "B", "BN"):
        k -= 1  # L1: trailing whitespace takes the paragraph level
    out[k:] = [base] * (n - k)
    for i, ch in enumerate(text):  # L1: tabs and line breaks too
        if unicodedata.bidirectional(ch) in ("S", "B"):
            out[i] = base
    return out, base


def _visual(items: list[tuple[int, T]]) -> list[T]:
    """L2: the items (level, item) in display order, left to right."""
    order = list(range(len(items)))
    if not items:
        return []
    top = max(lv for lv, _ in items)
    low = min((lv for lv, _ in items if lv % 2), default=top + 1)
    for level in range(top, low - 1, -1):
        i = 0
        while i < len(order):
            if items[order[i]][0] >= level:
                j = i
                while j < len(order) and items[order[j]][0] >= level:
                    j += 1
                order[i:j] = order[i:j][::-1]
                i = j
            else:
                i += 1
    return [items[k][1] for k in order]


# ---------------------------------------------------------------------------------------
# Runs: what is drawn, with which face, left to right

_MIRROR = str.maketrans("()[]{}<>«»‹›", ")(][}{><»«›‹")


@dataclass(frozen=True, slots=True)
class Run:
    """A piece of a line drawn with one face in one direction (text in logical order)."""

    text: str
    face: Face
    rtl: bool


def one_line(text: str) -> str:
    """`text` with control characters and line or paragraph breaks as spaces.

    A line is drawn as one line: libraqm refuses a paragraph break inside it, and other
    control characters have no glyph in any font.
    """
    if text.isprintable():
        return text
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


@functools.lru_cache(maxsize=8192)
def runs(text: str) -> tuple[Run, ...]:
    """`text` as runs of one face and one direction, in display order (left to right)."""
    text = one_line(text)
    if not text:
        return ()
    parts = clusters(text)
    chosen: list[Face] = []
    for k, cluster in enumerate(parts):
        face = _face_for(cluster)
        prev = chosen[k - 1] if k else None
        if (prev is not None and prev is not face and not prev.color and _neutral(cluster)
                and all(prev.covers(c) for c in cluster if not _ignorable(c))):
            face = prev  # keep spaces and punctuation in the face of the words around them
        chosen.append(face)
    char_levels, _base = levels(text)
    starts = itertools.accumulate((len(c) for c in parts[:-1]), initial=0)
    keyed = [(face, char_levels[i], cluster)
             for face, i, cluster in zip(chosen, starts, parts, strict=True)]
    logical = [(level, Run("".join(c for _, _, c in group), face, level % 2 == 1))
               for (face, level), group in itertools.groupby(keyed, lambda k: (k[0], k[1]))]
    return tuple(_visual(logical))


def _basic_rtl(text: str) -> str:
    """A right-to-left run laid out by hand without libraqm: clusters reversed, mirrored."""
    return "".join(c.translate(_MIRROR) for c in reversed(clusters(text)))


def _shaped(font: Font) -> bool:
    """Whether `font` lays text out with libraqm (Pillow's bundled font never does)."""
    return getattr(font, "layout_engine", None) == ImageFont.Layout.RAQM


def _laid_out(run: Run, font: Font) -> tuple[str, dict[str, str]]:
    """The text and options to give Pillow for `run`: libraqm orders it, else we do."""
    if _shaped(font):
        return run.text, {"direction": "rtl" if run.rtl else "ltr"}
    return (_basic_rtl(run.text) if run.rtl else run.text), {}


@functools.lru_cache(maxsize=16384)
def _run_width(run: Run, size: int) -> float:
    font = _load(run.face, size) or primary(size)
    text, options = _laid_out(run, font)
    width = font.getlength(text, **options)  # type: ignore[arg-type]
    if run.face.color:
        width *= size / _font_size(font, size)
    return width


def _font_size(font: Font, default: int) -> int:
    return int(getattr(font, "size", default))


@functools.lru_cache(maxsize=16384)
def measure(text: str, size: int) -> float:
    """The advance width of `text` in px at `size`, as `draw_text` draws it."""
    text = one_line(text)
    if text.isascii() and _ascii_primary():
        return primary(size).getlength(text)
    return sum(_run_width(r, size) for r in runs(text))


@functools.cache
def _ascii_primary() -> bool:
    """Whether the first face has every printable ASCII character (the fast path)."""
    return all(_first().covers(chr(c)) for c in range(0x20, 0x7F))


def ascent(size: int) -> int:
    """Pixels from the top of a line to its baseline at `size`."""
    font = primary(size)
    return font.getmetrics()[0] if isinstance(font, ImageFont.FreeTypeFont) else size


@functools.lru_cache(maxsize=512)
def _emoji_tile(run: Run, size: int) -> tuple[Image.Image, int] | None:
    """A colour run drawn at its font's bitmap size and scaled to `size`: (RGBA, baseline)."""
    font = _load(run.face, size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        return None
    up, down = font.getmetrics()
    text, options = _laid_out(run, font)
    width = max(1, round(font.getlength(text, **options)))  # type: ignore[arg-type]
    tile = Image.new("RGBA", (width, up + down), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((0, up), text, font=font, anchor="ls", embedded_color=True,
                              **options)  # type: ignore[arg-type]
    scale = size / _font_size(font, size)
    out = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                      Image.Resampling.LANCZOS)
    return out, round(up * scale)


def forget() -> None:
    """Drop every cached font lookup: the next text asks fontconfig again."""
    for cached in (faces, _strike, _load, _usable, _first, _draws, covered, _face_for, runs,
                   _run_width, measure, _ascii_primary, _emoji_tile):
        cached.cache_clear()


def draw_text(image: Image.Image, xy: tuple[float, float], text: str, size: int,
              fill: RGB) -> None:
    """Draw one line of `text` with its top-left at `xy`, every script in a face that has it."""
    draw = ImageDraw.Draw(image)
    x, top = xy
    text = one_line(text)
    if text.isascii() and _ascii_primary():
        draw.text((x, top), text, font=primary(size), fill=fill)
        return
    baseline = top + ascent(size)
    for run in runs(text):
        width = _run_width(run, size)
        if run.face.color and image.mode in ("RGB", "RGBA"):
            tile = _emoji_tile(run, size)
            if tile is not None:
                pic, up = tile
                image.paste(pic, (round(x), round(baseline - up)), pic)
                x += width
                continue
        font = _load(run.face, size) or primary(size)
        text, options = _laid_out(run, font)
        draw.text((x, baseline), text, font=font, fill=fill, anchor="ls",
                  **options)  # type: ignore[arg-type]
        x += width


__all__ = [
    "BUNDLED",
    "FONTCONFIG_PATTERN",
    "LAYOUT",
    "RAQM",
    "Face",
    "Run",
    "ascent",
    "clusters",
    "covered",
    "draw_text",
    "faces",
    "forget",
    "levels",
    "measure",
    "one_line",
    "parse_charset",
    "primary",
    "runs",
]

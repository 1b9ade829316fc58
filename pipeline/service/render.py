"""The embedded server's renderer: a deterministic picture for a request body and a seed.

Not noise: a small landscape (gradient sky, a sun or moon, layered hills, blocks and orbs)
whose palette and composition come from the seed and the prompt, with the prompt, the seed
and the size drawn on it, so an image says what made it even as a thumbnail. The prompt picks
the scene's family (which shapes, the base hue); the seed moves the palette, the light and
every position, so seeds of one prompt look related but clearly different.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..pictures import fonts
from ..planning import apispec

RGB = tuple[int, int, int]

PNG_COMPRESS_LEVEL = 1  # speed over size: the images are throwaway stand-ins
JPEG_QUALITY = 90
MAX_PROMPT_LINES = 6


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return int(r * 255), int(g * 255), int(b * 255)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # The face Latin text is drawn in; prompts in other scripts go through fonts.draw_text.
    return fonts.primary(size)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _sky(size: tuple[int, int], top: RGB, horizon: RGB, horizon_y: int) -> Image.Image:
    """A vertical gradient: one column computed in Python, stretched across the width."""
    w, h = size
    column = Image.new("RGB", (1, h))
    rows = []
    for y in range(h):
        t = min(1.0, y / max(1, horizon_y))
        rows.append(_mix(top, horizon, t ** 1.4))
    column.putdata(rows)
    return column.resize((w, h), Image.Resampling.NEAREST)


def _ridge(rng: random.Random, w: int, base: int, amp: float, step: int) -> list[tuple[int, int]]:
    """A hill line: a sum of a few sines with seeded phases and frequencies."""
    waves = [(rng.uniform(0.5, 3.5), rng.uniform(0, math.tau), rng.uniform(0.3, 1.0))
             for _ in range(3)]
    total = sum(a for _, _, a in waves)
    points = []
    for x in range(0, w + step, step):
        u = x / w
        y = sum(a * math.sin(math.tau * f * u + p) for f, p, a in waves) / total
        points.append((x, int(base - amp * y)))
    return points


def _wrap(text: str, size: int, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last line gets an ellipsis when text is left."""
    # Only the start can ever be shown; measuring 10,000 characters would cost seconds.
    words = text[: max_lines * 200].split()
    lines: list[str] = []
    current = ""
    i = 0
    while i < len(words):
        word = words[i]
        trial = f"{current} {word}" if current else word
        if fonts.measure(trial, size) <= width:
            current = trial
            i += 1
            continue
        if not current or fonts.measure(word, size) > width:
            # A word wider than a line: fill this line with as much of it as fits.
            head = f"{current} " if current else ""
            lo, hi = 0, len(word)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fonts.measure(head + word[:mid], size) <= width:
                    lo = mid
                else:
                    hi = mid - 1
            cut = lo if lo or current else 1  # always progress, even on a glyph wider than a line
            lines.append((head + word[:cut]).rstrip())
            words[i] = word[cut:]
            current = ""
        else:
            lines.append(current)
            current = ""
        if len(lines) == max_lines:
            break
    else:
        if current:
            lines.append(current)
        return lines
    # Out of lines with words left: end the last line with an ellipsis that fits.
    last = lines[-1]
    while last and fonts.measure(last + " …", size) > width:
        last = last[: -max(1, len(last) // 20)] if len(last) > 40 else last[:-1]
    lines[-1] = last.rstrip() + " …"
    return lines


def _shade_box(img: Image.Image, box: tuple[int, int, int, int], color: RGB, alpha: float) -> None:
    """Darken a rectangle in place by blending only that region (cheaper than a full overlay)."""
    region = img.crop(box)
    img.paste(Image.blend(region, Image.new("RGB", region.size, color), alpha), box[:2])


def render_image(request: dict[str, Any], seed: int) -> Image.Image:
    """The picture for a validated request body and a resolved seed, as an RGB image."""
    w, h = apispec.pixel_size(request)
    prompt = str(request.get("prompt", ""))
    negative = str(request.get("negative_prompt", "") or "")
    short = min(w, h)

    scene = _rng("scene", prompt, negative)  # the prompt's family: hue and which shapes
    rng = _rng("layout", prompt, negative, seed, w, h)  # everything the seed moves

    base_hue = scene.random()
    hue = base_hue + rng.uniform(-0.35, 0.35)
    night = rng.random() < 0.3
    if night:
        top = _hsv(hue + 0.6, 0.7, 0.18)
        horizon = _hsv(hue + 0.5, 0.5, 0.45)
    else:
        top = _hsv(hue, rng.uniform(0.45, 0.8), rng.uniform(0.55, 0.85))
        horizon = _hsv(hue + rng.uniform(0.05, 0.15), rng.uniform(0.25, 0.6), 0.97)
    horizon_y = int(h * rng.uniform(0.5, 0.7))
    img = _sky((w, h), top, horizon, horizon_y)
    draw = ImageDraw.Draw(img)

    if night:
        for _ in range(int(w * h / 9000)):
            x, y = rng.randrange(w), rng.randrange(max(1, horizon_y))
            r = rng.choice((1, 1, 1, 2, 2, 3)) * max(1, short // 512)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_mix(horizon, (255, 255, 240), 0.8))

    # Sun or moon with a soft halo of a few rings.
    cx = int(w * rng.uniform(0.15, 0.85))
    cy = int(horizon_y * rng.uniform(0.2, 0.75))
    radius = int(short * rng.uniform(0.06, 0.14))
    disc = (245, 245, 230) if night else _hsv(hue + 0.5 + rng.uniform(-0.1, 0.1), 0.55, 1.0)
    for k in range(4, 0, -1):
        halo = radius + k * radius // 3
        draw.ellipse((cx - halo, cy - halo, cx + halo, cy + halo),
                     fill=_mix(_mix(top, horizon, cy / max(1, horizon_y)), disc, 0.18 * (5 - k)))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=disc)

    # Floating orbs: the prompt decides whether the scene has them, the seed where.
    if scene.random() < 0.6:
        orb_hue = hue + 0.33
        for _ in range(rng.randint(2, 6)):
            r = int(short * rng.uniform(0.02, 0.07))
            x, y = rng.randrange(w), int(horizon_y * rng.uniform(0.1, 0.9))
            draw.ellipse((x - r, y - r, x + r, y + r),
                         fill=_hsv(orb_hue + rng.uniform(-0.08, 0.08), 0.6, 0.95),
                         outline=_hsv(orb_hue, 0.4, 0.5), width=max(1, r // 8))

    # Hills: far to near, each darker and more saturated (atmospheric perspective).
    layers = 3 + int(scene.random() * 2)
    ground = _hsv(hue + scene.uniform(0.2, 0.45), 0.65, 0.35 if not night else 0.18)
    step = max(4, w // 96)
    blocks_layer = rng.randrange(layers) if scene.random() < 0.65 else -1
    for i in range(layers):
        t = (i + 1) / layers
        base = int(horizon_y + (h - horizon_y) * (0.15 + 0.75 * i / layers))
        amp = (h - horizon_y) * rng.uniform(0.15, 0.45) * (1.2 - 0.4 * t)
        color = _mix(horizon, ground, 0.3 + 0.7 * t)
        ridge = _ridge(rng, w, base, amp, step)
        if i == blocks_layer:
            # Rectangles standing on this ridge: towers, monoliths, a skyline.
            block_color = _mix(color, top, 0.25)
            for _ in range(rng.randint(3, 9)):
                bw = int(w * rng.uniform(0.03, 0.09))
                x0 = rng.randrange(0, max(1, w - bw))
                foot = max(y for x, y in ridge if x0 - step <= x <= x0 + bw + step)
                bh = int(h * rng.uniform(0.08, 0.3))
                draw.rectangle((x0, foot - bh, x0 + bw, foot), fill=block_color)
                if night:
                    lit = _hsv(hue + 0.12, 0.5, 0.95)
                    for wy in range(foot - bh + bw // 5, foot - bw // 4, max(4, bw // 3)):
                        if rng.random() < 0.5:
                            draw.rectangle((x0 + bw // 4, wy, x0 + bw // 4 + bw // 6, wy + bw // 8),
                                           fill=lit)
        draw.polygon(ridge + [(w, h), (0, h)], fill=color)

    # The words: prompt in a shaded panel at the bottom, seed and size in the top corners.
    margin = max(8, short // 32)
    size_px = max(12, short // 20)
    lines = _wrap(prompt, size_px, w - 4 * margin, MAX_PROMPT_LINES) or [""]
    line_h = int(size_px * 1.25)
    small = max(10, short // 32)
    neg_lines = _wrap(f"without: {negative}", small, w - 4 * margin, 1) if negative else []
    panel_h = line_h * len(lines) + (int(short // 32 * 1.4) if neg_lines else 0) + 2 * margin
    panel = (margin, h - margin - panel_h, w - margin, h - margin)
    _shade_box(img, panel, (12, 12, 20), 0.62)
    y = panel[1] + margin
    for line in lines:
        fonts.draw_text(img, (2 * margin, y), line, size_px, (250, 250, 245))
        y += line_h
    for line in neg_lines:
        fonts.draw_text(img, (2 * margin, y), line, small, (205, 205, 215))

    tag = _font(max(12, short // 26))
    for text, anchor, x in ((f"seed {seed}", "la", margin), (f"{w}x{h}", "ra", w - margin)):
        bbox = draw.textbbox((x, margin), text, font=tag, anchor=anchor)
        pad = max(3, short // 160)
        box = (int(bbox[0]) - pad, int(bbox[1]) - pad, int(bbox[2]) + pad, int(bbox[3]) + pad)
        _shade_box(img, box, (12, 12, 20), 0.55)
        draw.text((x, margin), text, font=tag, anchor=anchor, fill=(250, 250, 245))
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    """PNG (fast compression), JPEG or WebP bytes of an RGB image, with no time-dependent
    metadata."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=JPEG_QUALITY, method=0)  # method 0: fastest
    else:
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def render(request: dict[str, Any], seed: int) -> bytes:
    """Encoded image bytes for a validated request body and a resolved (non-zero) seed."""
    return encode(render_image(request, seed), apispec.image_format(request))


def render_flat(request: dict[str, Any], seed: int) -> bytes:
    """A plain picture of one colour for the same request and seed: the size, format and
    determinism of `render` (another seed, prompt or size gives other bytes) at a fraction of
    its cost, for runs where what the pictures show does not matter."""
    w, h = apispec.pixel_size(request)
    rng = _rng("flat", request.get("prompt", ""), request.get("negative_prompt", "") or "",
               seed, w, h)
    colour = _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.9))
    fmt = apispec.image_format(request)
    if fmt == "png":
        # A one-colour palette: Pillow writes one bit a pixel, a few hundred bytes in a tenth
        # of the CPU of an RGB one (2 ms against 17 at 1 MP, whose filtering and deflate pass
        # over 3 MB dominate). Decoders and every reader here take it as the same colour.
        flat = Image.new("P", (w, h), 0)
        flat.putpalette(colour)
        return encode(flat, fmt)
    return encode(Image.new("RGB", (w, h), colour), fmt)


def blurred(data: bytes, fmt: str) -> bytes:
    """What a provider sends for a filtered image: the picture blurred beyond recognition."""
    with Image.open(io.BytesIO(data)) as img:
        out = img.convert("RGB").filter(ImageFilter.GaussianBlur(40))
    buf = io.BytesIO()
    out.save(buf, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buf.getvalue()

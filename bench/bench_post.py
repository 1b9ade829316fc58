"""Post-processing figures, side by side in one run: thumbnails vs vipsthumbnail and
ImageMagick, a 1,000-cell contact sheet vs ImageMagick's montage.

Every contender runs in its own subprocess on the same files; wall time is measured around
it and peak memory is the child's (and its waited-for children's) max RSS from wait4,
started through bench.clean_rss so that none of this process's memory is counted.
Test images are gradients and shapes (realistic to encode), made once into bench/.work/post.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from bench import measure, row

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "post"
N_IMAGES = 200
N_SHEET = 1000
SIDE = 1024
THUMB = 256
MONTAGE_PAGE = 200

OURS_THUMBS = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from imagebatch.pictures.post import make_thumbs
src, out = sys.argv[2], sys.argv[3]
tasks = [(os.path.join(src, n), os.path.join(out, n + ".jpg"), int(sys.argv[4]))
         for n in sorted(os.listdir(src))]
bad = [r for r in make_thumbs(tasks, os.cpu_count() or 1) if isinstance(r, str)]
assert not bad, bad[:3]
"""

OURS_SHEET = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key
from imagebatch.pictures.post import build_all
from imagebatch.storage.store import read_records
root = Path(sys.argv[2])
jobs = []
for rec in read_records(root / "results.jsonl"):
    i = len(jobs)
    body = {"model": "m", "prompt": f"bench {i}", "seed": i + 1}
    jobs.append(Job(i, f"v{i // 10}", rec.key, rec.path, canonical_json(body), i + 1,
                    (), f"v{i // 10} #{i + 1}"))
plan = Plan("bench", "m", "bench.yaml", OutputSettings(thumbnail=256, per_page=int(sys.argv[3])),
            tuple(jobs), len(jobs))
res = build_all(plan, root)
assert res.thumbs_kept == len(jobs) and res.thumbs_made == 0 and res.missing == 0, res
print(len(res.sheets))
"""


def _row(metric: str, value: float, unit: str, target: str | None = None,
         ok: bool | None = None, note: str = "") -> dict:
    return row("post", metric, value, unit, target, ok, note)


def _measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command run to completion."""
    wall, mb, _out = measure(cmd)
    return wall, mb


def _picture(i: int, size: int):
    """A gradient sky, hills and circles: compresses like a rendered picture, not noise."""
    from PIL import Image, ImageDraw

    top = ((i * 37) % 200 + 30, (i * 91) % 160 + 40, (i * 53) % 200 + 50)
    bottom = (255 - top[0] // 2, 255 - top[1] // 3, 255 - top[2] // 4)
    ramp = Image.linear_gradient("L").resize((size, size))
    img = Image.composite(Image.new("RGB", (size, size), top),
                          Image.new("RGB", (size, size), bottom), ramp.transpose(
                              Image.Transpose.FLIP_TOP_BOTTOM))
    draw = ImageDraw.Draw(img)
    for k in range(6):
        x, y, r = (i * 131 + k * 197) % size, (i * 71 + k * 89) % (size // 2), 20 + (k * 37) % 90
        draw.ellipse((x - r, y - r, x + r, y + r), fill=((k * 60) % 256, 200, (i * 40) % 256))
    draw.polygon([(0, size), (size // 3, size * 2 // 3), (size * 2 // 3, size * 4 // 5),
                  (size, size * 3 // 5), (size, size)], fill=(40, 70 + i % 100, 50))
    return img


def _make_inputs() -> tuple[Path, Path]:
    png, jpg = WORK / "png", WORK / "jpeg"
    for folder, fmt in ((png, "PNG"), (jpg, "JPEG")):
        if folder.is_dir() and len(list(folder.iterdir())) == N_IMAGES:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(N_IMAGES):
            ext = "png" if fmt == "PNG" else "jpg"
            _picture(i, SIDE).save(folder / f"img{i:04}.{ext}", format=fmt, quality=90)
    return png, jpg


def _make_sheet_outputs() -> Path:
    """An output folder of N_SHEET ok jobs whose thumbnails are already made and current."""
    from imagebatch.pictures.post import thumb_rel
    from imagebatch.storage.store import Record

    root = WORK / "sheet"
    if (root / "results.jsonl").is_file() and len(list((root / "thumbs").iterdir())) == N_SHEET:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "thumbs").mkdir()
    lines = []
    for i in range(N_SHEET):
        name = f"{i:04}.jpg"
        small = _picture(i, THUMB)
        small.save(root / "images" / name, format="JPEG", quality=85)
        small.save(root / thumb_rel(name), format="JPEG", quality=85)
        mtime = (root / "images" / name).stat().st_mtime_ns
        os.utime(root / thumb_rel(name), ns=(mtime, mtime))
        lines.append(Record(f"{i:064x}", name, "ok", "local", 1, None, None, None, 0.0, 0)
                     .to_line())
    (root / "results.jsonl").write_bytes(b"".join(lines))
    return root


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _thumb_rows(kind: str, src: Path, target_ratio: float) -> list[dict]:
    rows: list[dict] = []
    files = sorted(str(p) for p in src.iterdir())
    ours_wall, ours_mb = _measure([sys.executable, "-c", OURS_THUMBS, str(ROOT), str(src),
                                   str(_fresh(WORK / f"out-ours-{kind}")), str(THUMB)])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows.append(_row(f"thumbs {N_IMAGES}x{SIDE}px {kind}: ours", ours_wall, "s",
                     note=f"{os.cpu_count()} worker processes; load average {load:.1f} "
                          "(other work on the machine shrinks the parallel gain)"))
    rows.append(_row(f"thumbs {kind}: ours peak RSS (largest process)", ours_mb, "MB",
                     "< 100", ours_mb < 100))
    vips = shutil.which("vipsthumbnail")
    if vips:
        out = _fresh(WORK / f"out-vips-{kind}")
        wall, mb = _measure([vips, "-s", str(THUMB), "-o", f"{out}/%s.jpg[Q=85]", *files])
        rows.append(_row(f"thumbs {kind}: vipsthumbnail", wall, "s", note=f"peak {mb:.0f} MB"))
        ratio = ours_wall / wall
        rows.append(_row(f"thumbs {kind}: ours / vipsthumbnail", ratio, "x",
                         f"<= {target_ratio}", ratio <= target_ratio))
    else:
        rows.append(_row(f"thumbs {kind}: ours / vipsthumbnail", float("nan"), "x",
                         f"<= {target_ratio}", None, "vipsthumbnail not installed"))
    mogrify = shutil.which("mogrify")
    if mogrify:
        out = _fresh(WORK / f"out-im-{kind}")
        hint = ["-define", f"jpeg:size={THUMB * 2}x{THUMB * 2}"] if kind == "jpeg" else []
        wall, mb = _measure([mogrify, *hint, "-path", str(out), "-thumbnail",
                             f"{THUMB}x{THUMB}", "-quality", "85", "-format", "jpg", *files])
        rows.append(_row(f"thumbs {kind}: ImageMagick mogrify", wall, "s",
                         note=f"peak {mb:.0f} MB"))
        rows.append(_row(f"thumbs {kind}: ours / ImageMagick", ours_wall / wall, "x"))
    else:
        rows.append(_row(f"thumbs {kind}: ours / ImageMagick", float("nan"), "x", None, None,
                         "ImageMagick not installed"))
    return rows


def _sheet_rows() -> list[dict]:
    rows: list[dict] = []
    root = _make_sheet_outputs()
    for stale in root.glob("contact-sheet*.png"):
        stale.unlink()
    wall, mb = _measure([sys.executable, "-c", OURS_SHEET, str(ROOT), str(root), str(N_SHEET)])
    pages = len(list(root.glob("contact-sheet*.png")))
    rows.append(_row(f"contact sheet of {N_SHEET} thumbnails: ours (build_all)", wall, "s",
                     note=f"{pages} page(s) under the pixel cap; thumbnails current; "
                          "includes index.html"))
    rows.append(_row("contact sheet: ours peak RSS", mb, "MB", "< 150", mb < 150))
    montage = shutil.which("montage")
    if montage:
        thumbs = sorted(str(p) for p in (root / "thumbs").iterdir())
        # One montage of all 1,000 exceeds the distribution's ImageMagick resource policy
        # (cache resources exhausted), so montage gets pages of MONTAGE_PAGE, run in turn.
        m_wall = m_mb = 0.0
        for k in range(0, len(thumbs), MONTAGE_PAGE):
            wall_k, mb_k = _measure([
                montage, "-label", "%t", "-pointsize", "13", *thumbs[k:k + MONTAGE_PAGE],
                "-tile", "20x", "-geometry", f"{THUMB}x{THUMB}+4+4",
                str(WORK / f"montage-{k // MONTAGE_PAGE + 1}.png")])
            m_wall += wall_k
            m_mb = max(m_mb, mb_k)
        rows.append(_row(f"contact sheet of {N_SHEET}: ImageMagick montage", m_wall, "s",
                         note=f"peak {m_mb:.0f} MB, pages of {MONTAGE_PAGE}"))
        ratio = wall / m_wall
        rows.append(_row("contact sheet: ours / montage", ratio, "x", "<= 0.3", ratio <= 0.3))
    else:
        rows.append(_row("contact sheet: ours / montage", float("nan"), "x", "<= 0.3", None,
                         "montage (ImageMagick) not installed"))
    return rows


def run() -> list[dict]:
    """Thumbnail and contact-sheet figures against vips and ImageMagick, one run."""
    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    png, jpg = _make_inputs()
    rows: list[dict] = []
    for name, part in (("thumbs png", lambda: _thumb_rows("png", png, 0.6)),
                       ("thumbs jpeg", lambda: _thumb_rows("jpeg", jpg, 0.4)),
                       ("contact sheet", _sheet_rows)):
        try:
            rows += part()
        except Exception as exc:  # noqa: BLE001 - one failing contender must not hide the other figures
            rows.append(_row(f"{name}: error", float("nan"), "", None, False,
                             f"{type(exc).__name__}: {str(exc)[:300]}"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)

"""Export figures, side by side in one run: `imagebatch export` against vipsthumbnail (three
widths x WebP and JPEG) and against avifenc (AVIF at equal settings), and a re-export with
nothing changed.

Every contender runs in its own subprocesses on the same files, both cores busy: ours with
its worker processes, vipsthumbnail and avifenc as two processes each working on half the
files. Wall time is measured around the whole; peak memory is the largest single process
(wait4's max RSS, started through bench.clean_rss so none of this process is counted).
Sources are gradients and shapes (they encode like pictures, not noise), written through the
Store as a run writes them, into bench/.work/export.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

from bench import measure, row
from bench.bench_post import _picture

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "export"
SMALL = bool(os.environ.get("BENCH_EXPORT_SMALL"))  # a quick smoke run of this module
N_IMAGES = 10 if SMALL else 200
N_AVIF = 6 if SMALL else 60
N_REEXPORT_IMAGES = 250  # x 2 widths x 2 formats = 1,000 assets
SIDE = 1024
WIDTHS = (800, 480, 240)
QUALITY = 82
AVIF_QUALITY = 60
IMAGEBATCH = str(Path(sys.executable).parent / "imagebatch")


def _row(metric: str, value: float, unit: str, target: str | None = None,
         ok: bool | None = None, note: str = "") -> dict:
    return row("export", metric, value, unit, target, ok, note)


def _manifest(folder: Path, name: str, count: int, exports: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"version: 1\nname: {name}\njobs:\n  - id: pic\n    prompt: \"bench\"\n"
                    f"    seeds: {{start: 1, count: {count}}}\nexports:\n{exports}",
                    encoding="utf-8")
    return path


def _sources(manifest: Path, out: Path, side: int) -> list[Path]:
    """Every job of the manifest stored as done, picked in its picks file; the image paths."""
    sys.path.insert(0, str(ROOT))
    from imagebatch.planning.manifest import load_plan
    from imagebatch.storage.picks import picks_path, update_picks
    from imagebatch.storage.store import Store

    plan = load_plan(str(manifest))
    store = Store(out, plan.name, "local")
    images = [store.images / job.path for job in plan.jobs]
    if not all(p.is_file() for p in images):
        shutil.rmtree(store.root, ignore_errors=True)
        store.prepare()
        try:
            for i, job in enumerate(plan.jobs):
                buf = io.BytesIO()
                _picture(i, side).save(buf, "PNG")
                store.save(job, buf.getvalue(), attempts=1, seconds=0.0, created=None)
        finally:
            store.close()
    update_picks(picks_path(manifest), plan, {job.path: ("pick", None) for job in plan.jobs})
    return images


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _halves(files: list[Path]) -> list[list[Path]]:
    return [files[0::2], files[1::2]]


def _web_rows() -> list[dict]:
    rows: list[dict] = []
    exports = (f"  - path: \"{{seed}}-{{width}}.{{format}}\"\n"
               f"    width: [{', '.join(map(str, WIDTHS))}]\n"
               f"    format: [webp, jpeg]\n    quality: {QUALITY}\n")
    manifest = _manifest(WORK / "manifests", "web", N_IMAGES, exports)
    out = WORK / "outputs"
    files = _sources(manifest, out, SIDE)
    assets = _fresh(WORK / "assets-web")
    ours, ours_mb, _ = measure([IMAGEBATCH, "export", str(manifest), "--out", str(out),
                                 "--assets", str(assets)])
    made = len(json.loads((assets / "web" / "assets.json").read_text())["files"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows.append(_row(f"{N_IMAGES} x {SIDE}px PNG -> {len(WIDTHS)} widths x (WebP, JPEG): ours",
                     ours, "s", note=f"{made} files, {os.cpu_count()} worker processes, "
                                     f"request embedded in each; load average {load:.1f}"))
    rows.append(_row("web export: ours peak RSS (largest process)", ours_mb, "MB", "< 150",
                     ours_mb < 150))
    vips = shutil.which("vipsthumbnail")
    if not vips:
        rows.append(_row("web export: ours / vipsthumbnail", float("nan"), "x", "<= 1.0", None,
                         "vipsthumbnail not installed"))
        return rows
    target = _fresh(WORK / "vips-web")
    # the same work: every width in both formats, at the same quality, progressive and
    # optimised JPEG like ours; two processes, each a half of the images
    script = " && ".join(
        f"{vips} -s {w} -o '{target}/%s-{w}.{ext}[Q={QUALITY}{extra}]' \"$@\""
        for w in WIDTHS for ext, extra in (("webp", ""), ("jpg", ",optimize_coding,interlace")))
    halves = _halves(files)
    cmd = ["sh", "-c", " & ".join(f"sh -c '{_quote(script)}' _ {' '.join(map(str, h))}"
                                  for h in halves) + " & wait"]
    wall, mb, _ = measure(cmd)
    written = len(list(target.iterdir()))
    rows.append(_row("web export: vipsthumbnail, same work", wall, "s",
                     note=f"{written} files, 2 processes; peak {mb:.0f} MB"))
    ratio = ours / wall
    rows.append(_row("web export: ours / vipsthumbnail", ratio, "x", "<= 1.0", ratio <= 1.0))
    return rows


def _quote(script: str) -> str:
    """`script` for a single-quoted shell word."""
    return script.replace("'", "'\\''")


def _avif_rows() -> list[dict]:
    rows: list[dict] = []
    exports = f"  - path: \"{{seed}}.{{format}}\"\n    format: avif\n    quality: {AVIF_QUALITY}\n"
    manifest = _manifest(WORK / "manifests", "avif", N_AVIF, exports)
    out = WORK / "outputs"
    files = _sources(manifest, out, SIDE)
    assets = _fresh(WORK / "assets-avif")
    ours, ours_mb, _ = measure([IMAGEBATCH, "export", str(manifest), "--out", str(out),
                                 "--assets", str(assets)])
    ours_bytes = sum(p.stat().st_size for p in (assets / "avif").glob("*.avif"))
    rows.append(_row(f"AVIF {N_AVIF} x {SIDE}px, quality {AVIF_QUALITY}, speed 6: ours", ours,
                     "s", note=f"peak {ours_mb:.0f} MB; {ours_bytes / N_AVIF / 1024:.0f} KB "
                               "per file"))
    avifenc = shutil.which("avifenc")
    if not avifenc:
        rows.append(_row("AVIF: ours / avifenc", float("nan"), "x", "<= 1.2", None,
                         "avifenc not installed"))
        return rows
    # libavif maps quality q to the quantizer (100 - q) * 63 / 100, rounded; this avifenc
    # predates -q, so it gets that quantizer as --min/--max, with ours' speed and 4:2:0
    q = ((100 - AVIF_QUALITY) * 63 + 50) // 100
    target = _fresh(WORK / "avifenc")
    one = (f"for f in \"$@\"; do {avifenc} -j 1 -s 6 -y 420 --min {q} --max {q} \"$f\" "
           f"\"{target}/$(basename \"$f\" .png).avif\" >/dev/null || exit 1; done")
    cmd = ["sh", "-c", " & ".join(f"sh -c '{_quote(one)}' _ {' '.join(map(str, h))}"
                                  for h in _halves(files)) + " & wait"]
    wall, mb, _ = measure(cmd)
    theirs = sorted(target.glob("*.avif"))
    their_bytes = sum(p.stat().st_size for p in theirs)
    rows.append(_row("AVIF: avifenc, same settings", wall, "s",
                     note=f"{len(theirs)} files, 2 processes; peak {mb:.0f} MB; "
                          f"{their_bytes / max(1, len(theirs)) / 1024:.0f} KB per file"))
    ratio = ours / wall
    rows.append(_row("AVIF: ours / avifenc (time)", ratio, "x", "<= 1.2", ratio <= 1.2))
    rows.append(_row("AVIF: ours / avifenc (bytes)", ours_bytes / max(1, their_bytes), "x",
                     note=f"mean PSNR vs source: ours {_psnr(files, assets / 'avif'):.1f}"
                          f" dB, avifenc {_psnr(files, target):.1f} dB"))
    return rows


def _psnr(sources: list[Path], folder: Path) -> float:
    """Mean PSNR (dB) of the AVIF files in `folder` against their sources."""
    import math

    from PIL import Image, ImageChops, ImageStat

    values = []
    for src in sources[:10]:
        found = next(iter(folder.glob(f"{src.stem}.avif")), None)
        if found is None:
            continue
        with Image.open(src) as a, Image.open(found) as b:
            diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
            mse = sum(ImageStat.Stat(diff).rms[i] ** 2 for i in range(3)) / 3
        values.append(10 * math.log10(255 ** 2 / mse) if mse else 99.0)
    return sum(values) / len(values) if values else float("nan")


def _reexport_rows() -> list[dict]:
    rows: list[dict] = []
    exports = ("  - path: \"{seed}-{width}.{format}\"\n    width: [96, 48]\n"
               "    format: [webp, jpeg]\n")
    manifest = _manifest(WORK / "manifests", "again", N_REEXPORT_IMAGES, exports)
    out = WORK / "outputs"
    _sources(manifest, out, 128)
    assets = _fresh(WORK / "assets-again")
    cmd = [IMAGEBATCH, "export", str(manifest), "--out", str(out), "--assets", str(assets)]
    measure(cmd)  # the first export makes them all
    count = len(json.loads((assets / "again" / "assets.json").read_text())["files"])
    wall, mb, text = measure(cmd)
    m = re.search(r"(\d+) files? written", text)
    written = int(m.group(1)) if m else -1
    rows.append(_row(f"re-export, nothing changed, {count:,} assets: wall (whole command)",
                     wall, "s", "< 1", wall < 1, note=f"peak {mb:.0f} MB; includes Python "
                                                      "start-up and loading the plan"))
    rows.append(_row("re-export, nothing changed: files written", written, "files", "0",
                     written == 0))
    return rows


def run() -> list[dict]:
    """Export figures against vipsthumbnail and avifenc, and the no-change re-export."""
    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name, part in (("web export", _web_rows), ("AVIF", _avif_rows),
                       ("re-export", _reexport_rows)):
        try:
            rows += part()
        except Exception as exc:  # noqa: BLE001 - one failing contender must not hide the others
            rows.append(_row(f"{name}: error", float("nan"), "", None, False,
                             f"{type(exc).__name__}: {str(exc)[:300]}"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)

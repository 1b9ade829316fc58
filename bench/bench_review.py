"""Review page figures: a 5,000-image page in Chromium, and concurrent saves to the picks file.

The outputs (5,000 small images, their thumbnails and a matching results.jsonl) are written
straight to bench/.work/review, not generated through the server. `imagebatch review` runs
as its own process, as a user starts it, and is driven from here: by Playwright with the
system chromium for the page, by aiohttp for the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import row

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "review"
N_IMAGES = 5000
VARIANTS, SEEDS = 50, 100  # 50 rows of 100 seeds, the contact sheet's layout
SIDE = 256  # images as small as the thumbnails: the page is what is measured
BURSTS, BURST = 5, 20
MANIFEST = f"""\
version: 1
name: review-bench
jobs:
  - id: scene
    prompt: "scene {{n}}, seed sweep"
    aspect_ratio: "3:2"
    seeds: {{start: 1, count: {SEEDS}}}
    matrix:
      n: [{", ".join(f'"{i:02}"' for i in range(VARIANTS))}]
"""


def _row(metric: str, value: float, unit: str, target: str | None = None,
         ok: bool | None = None, note: str = "") -> dict:
    return row("review", metric, value, unit, target, ok, note)


def _make_outputs() -> tuple[Path, Path]:
    """(manifest, out): the plan's images, current thumbnails and results.jsonl on disk."""
    from PIL import Image, ImageDraw

    from imagebatch.pictures.post import thumb_rel
    from imagebatch.planning.manifest import load_plan
    from imagebatch.storage.store import Record

    manifest = WORK / "review-bench.yaml"
    out = WORK / "outputs"
    root = out / "review-bench"
    WORK.mkdir(parents=True, exist_ok=True)
    if (manifest.is_file() and manifest.read_text() == MANIFEST
            and (root / "results.jsonl").is_file()):
        plan = load_plan(str(manifest))
        if sum(1 for _ in (root / "results.jsonl").open()) == len(plan.jobs):
            return manifest, out
    shutil.rmtree(out, ignore_errors=True)
    manifest.write_text(MANIFEST)
    plan = load_plan(str(manifest))
    assert len(plan.jobs) == N_IMAGES, len(plan.jobs)
    lines = []
    w, h = SIDE, SIDE * 2 // 3
    for i, job in enumerate(plan.jobs):
        img = Image.new("RGB", (w, h), ((i * 37) % 200 + 30, (i * 11) % 160 + 60, 150))
        draw = ImageDraw.Draw(img)
        draw.ellipse((i % 180, 20, i % 180 + 60, 80), fill=(250, 220, (i * 7) % 256))
        draw.rectangle((0, h * 2 // 3, w, h), fill=(30, 60 + i % 120, 40))
        image = root / "images" / job.path
        thumb = root / thumb_rel(job.path)
        image.parent.mkdir(parents=True, exist_ok=True)
        thumb.parent.mkdir(parents=True, exist_ok=True)
        img.save(image, format="PNG", compress_level=1)
        img.save(thumb, format="JPEG", quality=85)
        mtime = image.stat().st_mtime_ns  # a thumbnail is current when the mtimes agree
        os.utime(thumb, ns=(mtime, mtime))
        lines.append(Record(job.key, job.path, "ok", "local", 1, None, None, None, 0.0, 0)
                     .to_line())
    (root / "results.jsonl").write_bytes(b"".join(lines))
    return manifest, out


class _Server:
    """`imagebatch review` in its own process; its URL as it printed it."""

    def __init__(self, manifest: Path, out: Path, picks: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagebatch", "review", str(manifest), "--out", str(out),
             "--picks", str(picks), "--no-open"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"review did not start: {self.proc.stderr.read()[-500:]}")
        self.base = self.url.split("/?", 1)[0]
        self.token = self.url.split("token=", 1)[1]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


FIRST_SHOWN = """() => {
  const imgs = Array.from(document.querySelectorAll('img[data-path]')).slice(0, 12);
  return imgs.length === 12 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def _page_rows(manifest: Path, out: Path) -> list[dict]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        return [_row("page of 5,000: first thumbnails shown", float("nan"), "s", "< 2", None,
                     "playwright or chromium not installed")]
    rows: list[dict] = []
    root = out / "review-bench"
    server = _Server(manifest, out, WORK / "page.picks.json")
    try:
        with urllib.request.urlopen(server.url, timeout=60) as resp:
            sent = len(resp.read())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                "--disable-dev-shm-usage"])
            try:
                for label, remove_thumbs in (("thumbnails on disk", False),
                                             ("thumbnails made on demand", True)):
                    if remove_thumbs:  # the first screenful's, made by the server when asked
                        for p in sorted((root / "thumbs").rglob("*.jpg"))[:200]:
                            p.unlink()
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    started = time.perf_counter()
                    page.goto(server.url, wait_until="commit")
                    page.wait_for_function(FIRST_SHOWN, polling="raf", timeout=60_000)
                    shown = time.perf_counter() - started
                    page.wait_for_selector("body[data-items='loaded']", timeout=60_000)
                    ready = time.perf_counter() - started
                    cells = page.locator("img[data-path]").count()
                    dom = page.evaluate("document.documentElement.outerHTML.length")
                    page.close()
                    ok = cells == N_IMAGES
                    rows.append(_row(f"page of {N_IMAGES:,} ({label}): first thumbnails shown",
                                     shown, "s", "< 2", ok and shown < 2,
                                     f"12 thumbnails decoded, from navigation; {cells} images "
                                     f"on the page; {sent / 1e6:.1f} MB of HTML sent, "
                                     f"{dom / 1e6:.1f} MB once its script added the buttons"))
                    rows.append(_row(f"page of {N_IMAGES:,} ({label}): details of all loaded",
                                     ready, "s", note="GET /api/items applied to every cell"))
            finally:
                browser.close()
    finally:
        server.close()
    return rows


def _put_rows(manifest: Path, out: Path) -> list[dict]:
    import aiohttp

    from imagebatch.planning.manifest import load_plan
    from imagebatch.storage import picks

    plan = load_plan(str(manifest))
    file = WORK / "put.picks.json"
    file.unlink(missing_ok=True)
    picks.update_picks(file, plan, {j.path: ("pick", 1 + j.index % 5) for j in plan.jobs})
    before = picks.load_picks(file, plan).entries
    assert len(before) == N_IMAGES

    # one write of the whole file, as each PUT would cost if it wrote alone
    one = []
    for k in range(10):
        started = time.perf_counter()
        picks.update_picks(file, plan, {plan.jobs[k].path: (picks.KEEP, 1 + (k + 1) % 5)})
        one.append(time.perf_counter() - started)
    before = picks.load_picks(file, plan).entries

    server = _Server(manifest, out, file)
    latencies: list[float] = []
    sent: dict[str, tuple[str, int]] = {}

    async def burst(http: aiohttp.ClientSession, b: int) -> None:
        jobs = plan.jobs[100 + b * BURST: 100 + (b + 1) * BURST]

        async def put(k: int, path: str) -> None:
            body = {"status": "reject", "rating": 1 + (b + k) % 5}
            started = time.perf_counter()
            async with http.put(f"{server.base}/api/picks/{path}", json=body,
                                headers={"Authorization": f"Bearer {server.token}"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"PUT answered {resp.status}")
            latencies.append(time.perf_counter() - started)
            sent[path] = (body["status"], body["rating"])

        await asyncio.gather(*(put(k, j.path) for k, j in enumerate(jobs)))

    async def main() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=BURST)) as http:
            # warm the connections, then the bursts, one after another
            async with http.get(f"{server.base}/api/items?token={server.token}") as resp:
                await resp.read()
            for b in range(BURSTS):
                await burst(http, b)

    try:
        asyncio.run(main())
    finally:
        server.close()
    after = picks.load_picks(file, plan).entries
    lost = sum(1 for p, want in sent.items() if (after[p].status, after[p].rating) != want)
    lost += sum(1 for p, e in before.items() if p not in sent and after.get(p) != e)
    lat = sorted(latencies)
    p95 = lat[max(0, round(0.95 * len(lat)) - 1)]
    return [
        _row(f"{BURST} concurrent PUTs on a {N_IMAGES:,}-entry picks file: p95", p95 * 1000, "ms",
             "< 50", p95 < 0.05,
             f"{BURSTS} bursts of {BURST} against `imagebatch review`; median "
             f"{statistics.median(lat) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms"),
        _row("concurrent PUTs: changes lost", lost, "", "0", lost == 0,
             f"{len(sent)} changed, {N_IMAGES - len(sent)} left as they were, checked on disk"),
        _row(f"one update_picks of a {N_IMAGES:,}-entry file (each PUT alone would cost this)",
             statistics.median(one) * 1000, "ms",
             note=f"x{BURST} in a row = {statistics.median(one) * BURST * 1000:.0f} ms; the server "
                  "writes the changes that arrive together at once"),
    ]


def run() -> list[dict]:
    """The page of 5,000 images in Chromium, and concurrent saves; one run each."""
    sys.path.insert(0, str(ROOT))
    started = time.perf_counter()
    manifest, out = _make_outputs()
    rows = [_row(f"outputs of {N_IMAGES:,} images made on disk", time.perf_counter() - started,
                 "s", note="reused when already there")]
    for name, part in (("page", _page_rows), ("puts", _put_rows)):
        try:
            rows += part(manifest, out)
        except Exception as exc:  # noqa: BLE001 - one failing part must not hide the other
            rows.append(_row(f"{name}: error", float("nan"), "", None, False,
                             f"{type(exc).__name__}: {str(exc)[:300]}"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))

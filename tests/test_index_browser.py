"""index.html in a real browser (headless chromium over file://): images load, text stays text."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from imagebatch.pictures.post import build_all
from imagebatch.planning.plan import Job, OutputSettings, Plan, canonical_json, job_key
from imagebatch.storage.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser binary"),
]
EVIL = "<script>alert(1)</script> fox & \"friends\""


def _outputs(tmp_path: Path, n: int = 30) -> Path:
    jobs = []
    for i in range(n):
        body = {"model": "m", "prompt": f"{EVIL} {i // 5}", "seed": i + 1,
                "aspect_ratio": "1:1" if i % 2 else "16:9"}
        jobs.append(Job(i, "fox", job_key(body), f"fox/{i // 5} x/{i + 1}.png",
                        canonical_json(body), i + 1, (("v", str(i // 5)),),
                        f"fox {i // 5} #{i + 1}"))
    plan = Plan("browser", "m", "b.yaml", OutputSettings(thumbnail=96), tuple(jobs), n)
    store = Store(tmp_path / "out", plan.name, "local")
    store.prepare()
    for job in jobs[:-1]:
        buf = io.BytesIO()
        Image.new("RGB", (320, 180) if job.index % 2 == 0 else (200, 200),
                  (job.index * 8, 90, 160)).save(buf, format="PNG")
        store.save(job, buf.getvalue(), attempts=1, seconds=0, created=0)
    store.fail(jobs[-1], f"refused: {EVIL}", attempts=1, seconds=0)
    store.close()
    build_all(plan, store.root, workers=1)
    return store.root / "index.html"


def _chromium(*args: str) -> list[str]:
    assert CHROMIUM is not None
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", *args]


def test_dump_dom_shows_the_prompt_as_text(tmp_path):
    index = _outputs(tmp_path, 6)
    dom = subprocess.run(
        _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
                  "--dump-dom", index.as_uri()),
        capture_output=True, text=True, timeout=90, check=True).stdout
    assert "<figure" in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script>alert(1)" not in dom.replace("&lt;", "<").split("<body", 1)[0]
    assert "<script" not in dom.split("<body", 1)[1]


async def _cdp(ws: aiohttp.ClientWebSocketResponse, seq: list[int], method: str,
               **params: object) -> dict:
    seq[0] += 1
    await ws.send_json({"id": seq[0], "method": method, "params": params})
    async for msg in ws:
        doc = json.loads(msg.data)
        if doc.get("id") == seq[0]:
            assert "error" not in doc, doc
            return doc["result"]
        if doc.get("method") == "Page.javascriptDialogOpening":
            raise AssertionError(f"a dialog opened: {doc}")
    raise AssertionError("the browser closed the connection")


async def test_every_image_loads_and_no_script_runs(tmp_path):
    index = _outputs(tmp_path)
    profile = tmp_path / "profile"
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, then only awaited over CDP
        _chromium(f"--user-data-dir={profile}", "--remote-debugging-port=0",
                  "--window-size=1200,900", "about:blank"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                seq = [0]
                await _cdp(ws, seq, "Page.enable")
                await _cdp(ws, seq, "Page.navigate", url=index.as_uri())
                ready = "document.readyState === 'complete' && document.images.length > 0"
                for _ in range(200):
                    r = await _cdp(ws, seq, "Runtime.evaluate", expression=ready,
                                   returnByValue=True)
                    if r["result"].get("value"):
                        break
                    await asyncio.sleep(0.05)
                # Lazy images below the fold load only when asked: make them all eager,
                # then wait (in the page) until every one has settled.
                settle = """new Promise(done => {
                    const imgs = Array.from(document.images);
                    imgs.forEach(i => { i.loading = 'eager'; });
                    const check = () => imgs.every(i => i.complete) ? done(imgs.map(i =>
                        [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])) :
                        setTimeout(check, 50);
                    check();
                })"""
                r = await _cdp(ws, seq, "Runtime.evaluate", expression=settle,
                               awaitPromise=True, returnByValue=True, timeout=30000)
                images = r["result"]["value"]
                assert len(images) == 29  # one per image on disk; the failed job has none
                broken = [src for src, w, h in images if not (w > 0 and h > 0)]
                assert broken == []
                r = await _cdp(ws, seq, "Runtime.evaluate", returnByValue=True, expression=(
                    "[document.scripts.length, document.body.innerText, "
                    "Array.from(document.querySelectorAll('a')).map(a => a.href)]"))
                scripts, text, links = r["result"]["value"]
                assert scripts == 0
                assert EVIL in text and f"refused: {EVIL}" in text
                assert all(link.startswith(("file://", index.as_uri())) for link in links)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

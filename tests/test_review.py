"""`imagebatch review`: its JSON API, files and page over a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from review_helpers import HOSTILE, Outputs, make_outputs, serving
from stress_helpers import Forked, forker, start_cli

from imagebatch.assets.review import CSP, BadChange, has_display, merge_changes, parse_change
from imagebatch.storage import picks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def outputs(tmp_path: Path) -> Outputs:
    return make_outputs(tmp_path)


def base(url: str) -> str:
    return url.split("/?", 1)[0]


def auth(srv) -> dict[str, str]:
    return {"Authorization": f"Bearer {srv.review.token}"}


async def raw_get(port: int, target: str, host: str | None = None,
                  extra: str = "") -> tuple[int, bytes]:
    """One GET with the request line exactly as given (no client normalises the path)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n{extra}"
                 f"Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---- pure parts ------------------------------------------------------------------------


def test_parse_change_accepts_status_rating_or_both() -> None:
    assert parse_change({"status": "pick"}) == {"status": "pick"}
    assert parse_change({"rating": 5, "status": None}) == {"rating": 5, "status": None}
    assert parse_change({"rating": None}) == {"rating": None}


@pytest.mark.parametrize("body, words", [
    ([], "JSON object"), ("pick", "JSON object"), ({}, "nothing to change"),
    ({"status": "yes"}, "'status'"), ({"status": 1}, "'status'"),
    ({"rating": 0}, "'rating'"), ({"rating": 6}, "'rating'"), ({"rating": True}, "'rating'"),
    ({"rating": 2.5}, "'rating'"), ({"rating": "3"}, "'rating'"),
    ({"status": "pick", "colour": "red"}, "unknown field"),
])
def test_parse_change_refuses_bad_bodies(body: object, words: str) -> None:
    with pytest.raises(BadChange, match=words):
        parse_change(body)


def test_merge_changes_keeps_what_no_body_set_and_later_fields_win() -> None:
    got = merge_changes([("a", {"status": "pick"}), ("b", {"rating": 2}),
                         ("a", {"rating": 4}), ("b", {"status": None, "rating": None}),
                         ("c", {"status": "reject"}), ("c", {"status": "pick"})])
    assert got == {"a": ("pick", 4), "b": None, "c": ("pick", picks.KEEP)}


def test_has_display() -> None:
    assert not has_display({}, "linux")
    assert has_display({"DISPLAY": ":0"}, "linux")
    assert has_display({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert has_display({}, "darwin") and has_display({}, "win32")


# ---- token, Host, Origin -----------------------------------------------------------------


async def test_every_route_needs_the_token(outputs: Outputs) -> None:
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        url = base(srv.url)
        targets = ["/", "/api/items", "/static/review.js", "/files/images/fox/1.png",
                   "/thumb/fox/1.png", "/nope"]
        for target in targets:
            for suffix in ("", "?token=", "?token=" + "x" * len(srv.review.token),
                           "?token=" + srv.review.token[:-1]):
                async with http.get(url + target + suffix) as resp:
                    assert resp.status == 403, (target, suffix)
                    assert "token" in (await resp.json())["error"]
        async with http.put(url + "/api/picks/fox/1.png", json={"status": "pick"},
                            headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 403
        async with http.put(url + "/api/picks/fox/1.png", json={"status": "pick"},
                            headers={"Authorization": f"Basic {srv.review.token}"}) as resp:
            assert resp.status == 403
        assert not outputs.picks_file.exists()
        # the right token, either way
        async with http.get(srv.url) as resp:
            assert resp.status == 200
        async with http.get(url + "/api/items", headers=auth(srv)) as resp:
            assert resp.status == 200


async def test_tokens_differ_between_servers(outputs: Outputs) -> None:
    async with serving(outputs) as a, serving(outputs) as b, aiohttp.ClientSession() as http:
        assert a.review.token != b.review.token and len(a.review.token) >= 24
        async with http.get(base(b.url) + "/api/items?token=" + a.review.token) as resp:
            assert resp.status == 403


async def test_host_must_name_this_server(outputs: Outputs) -> None:
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        url = base(srv.url) + "/api/items"
        for host in ("evil.example", f"evil.example:{srv.port}", f"127.0.0.1:{srv.port + 1}",
                     f"127.0.0.2:{srv.port}", f"localhost.evil.example:{srv.port}", ""):
            async with http.get(url, headers={**auth(srv), "Host": host}) as resp:
                assert resp.status == 403, host
        for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", f"LOCALHOST:{srv.port}"):
            async with http.get(url, headers={**auth(srv), "Host": host}) as resp:
                assert resp.status == 200, host
        status, body = await raw_get(srv.port, f"/?token={srv.review.token}",
                                     host=f"rebind.example:{srv.port}")
        assert status == 403 and b"Host" in body


async def test_origin_of_another_site_is_refused(outputs: Outputs) -> None:
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        url = base(srv.url) + "/api/picks/fox/1.png"
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{srv.port + 1}",
                       f"https://127.0.0.1:{srv.port}", f"http://localhost:{srv.port}"):
            async with http.put(url, json={"status": "pick"},
                                headers={**auth(srv), "Origin": origin}) as resp:
                assert resp.status == 403, origin
        async with http.put(url, json={"status": "pick"},
                            headers={**auth(srv), "Sec-Fetch-Site": "cross-site"}) as resp:
            assert resp.status == 403
        assert not outputs.picks_file.exists()
        async with http.put(url, json={"status": "pick"},
                            headers={**auth(srv), "Origin": f"http://127.0.0.1:{srv.port}"}) as r:
            assert r.status == 200


async def test_listening_on_every_address_still_needs_the_token(outputs: Outputs) -> None:
    async with serving(outputs, host="0.0.0.0") as srv, aiohttp.ClientSession() as http:
        assert srv.url.startswith(f"http://127.0.0.1:{srv.port}/?token=")
        url = f"http://127.0.0.1:{srv.port}/api/items"
        async with http.get(url) as resp:
            assert resp.status == 403
        # an address of the machine names it; a DNS name could be an attacker's
        async with http.get(url, headers={**auth(srv), "Host": f"10.1.2.3:{srv.port}"}) as resp:
            assert resp.status == 200
        async with http.get(url, headers={**auth(srv), "Host": f"evil.example:{srv.port}"}) as r:
            assert r.status == 403


async def test_security_headers(outputs: Outputs) -> None:
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        for target in ("/", "/api/items", "/files/images/fox/1.png", "/static/review.js",
                       "/nope"):
            async with http.get(base(srv.url) + target, headers=auth(srv)) as resp:
                assert resp.headers["Content-Security-Policy"] == CSP
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Referrer-Policy"] == "no-referrer"
                if target in ("/", "/api/items", "/nope"):
                    assert resp.headers["Cache-Control"] == "no-store"
        async with http.get(base(srv.url) + "/?token=bad") as resp:
            assert resp.headers["Content-Security-Policy"] == CSP
    assert "unsafe-inline" not in CSP and "http" not in CSP


# ---- the API -------------------------------------------------------------------------


async def test_items_in_plan_order_with_their_decisions(outputs: Outputs) -> None:
    plan = outputs.plan
    picks.update_picks(outputs.picks_file, plan, {plan.jobs[1].path: ("reject", 2)})
    async with serving(outputs) as srv, aiohttp.ClientSession() as http, \
            http.get(base(srv.url) + "/api/items", headers=auth(srv)) as resp:
        assert resp.status == 200
        items = await resp.json()
    assert [i["path"] for i in items] == [j.path for j in plan.jobs]
    first = items[0]
    assert set(first) >= {"path", "key", "status", "rating", "stale", "thumb", "image",
                          "request", "vars", "seed"}
    assert first["request"]["prompt"].startswith(HOSTILE)
    assert first["key"] == plan.jobs[0].key and first["seed"] == 1 and first["vars"] == {}
    assert (first["status"], first["rating"], first["stale"]) == (None, None, False)
    assert (items[1]["status"], items[1]["rating"]) == ("reject", 2)
    assert items[3]["vars"] == {"style": "clay", "subject": "boat"}
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        for item in items:  # the URLs it gives are served (with the token)
            for url in (item["thumb"], item["image"]):
                async with http.get(base(srv.url) + url, headers=auth(srv)) as resp:
                    assert resp.status == 200
                    Image.open(io.BytesIO(await resp.read())).load()


async def test_put_saves_at_once_and_answers_the_stored_entry(outputs: Outputs) -> None:
    path = outputs.plan.jobs[0].path
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        url = base(srv.url) + "/api/picks/" + path
        async with http.put(url, json={"status": "pick"}, headers=auth(srv)) as resp:
            assert resp.status == 200
            assert await resp.json() == {"path": path, "key": outputs.plan.jobs[0].key,
                                         "status": "pick", "rating": None, "stale": False}
        doc = json.loads(outputs.picks_file.read_text())
        assert doc["picks"][path] == {"key": outputs.plan.jobs[0].key, "rating": None,
                                      "status": "pick"}
        # a rating alone keeps the status in the file (set there by anyone)
        async with http.put(url, json={"rating": 4}, headers=auth(srv)) as resp:
            assert (await resp.json())["status"] == "pick"
        picks.update_picks(outputs.picks_file, outputs.plan, {path: ("reject", picks.KEEP)})
        async with http.put(url, json={"rating": 5}, headers=auth(srv)) as resp:
            body = await resp.json()
            assert (body["status"], body["rating"]) == ("reject", 5)
        async with http.put(url, json={"status": None, "rating": None}, headers=auth(srv)) as r:
            assert (await r.json())["status"] is None
        assert path not in json.loads(outputs.picks_file.read_text())["picks"]


async def test_put_refuses_bad_bodies_and_unknown_paths(outputs: Outputs) -> None:
    path = outputs.plan.jobs[0].path
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        url = base(srv.url) + "/api/picks/"
        for body in (b"", b"{", b"[]", b'"pick"', b'{"status": "maybe"}', b'{"rating": 9}',
                     b'{"rating": true}', b"{}", b'{"status": "pick", "x": 1}', b"\xff\xfe"):
            async with http.put(url + path, data=body, headers=auth(srv)) as resp:
                assert resp.status == 400, body
                assert (await resp.json())["error"]
        async with http.put(url + path, data=b"x" * 100_000, headers=auth(srv)) as resp:
            assert resp.status in (400, 413)
        for other in ("fox/9.png", "fox", "../rv.yaml", "images/fox/1.png", "fox/1.png/x"):
            async with http.put(url + other, json={"status": "pick"}, headers=auth(srv)) as r:
                assert r.status == 404, other
        async with http.get(url + path, headers=auth(srv)) as resp:
            assert resp.status == 405
    assert not outputs.picks_file.exists()


async def test_stale_entries_show_and_a_new_decision_starts_afresh(outputs: Outputs) -> None:
    path = outputs.plan.jobs[0].path
    outputs.picks_file.write_text(json.dumps({"version": 1, "manifest": "rv", "picks": {
        path: {"key": "0" * 64, "rating": 5, "status": "pick"}}}))
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        async with http.get(base(srv.url) + "/api/items", headers=auth(srv)) as resp:
            item = (await resp.json())[0]
        assert item["stale"] is True and item["status"] == "pick"
        async with http.get(srv.url) as resp:
            assert f'data-path="{path}" data-status="stale"' in await resp.text()
        async with http.put(base(srv.url) + "/api/picks/" + path, json={"rating": 2},
                            headers=auth(srv)) as resp:
            # the old pick was made on another picture: it is not carried over
            assert await resp.json() == {"path": path, "key": outputs.plan.jobs[0].key,
                                         "status": None, "rating": 2, "stale": False}


async def test_concurrent_puts_all_land(outputs: Outputs) -> None:
    plan = outputs.plan
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        async def put(i: int) -> int:
            job = plan.jobs[i % len(plan.jobs)]
            body = {"status": "pick"} if i < len(plan.jobs) else {"rating": 1 + i % 5}
            async with http.put(base(srv.url) + "/api/picks/" + job.path, json=body,
                                headers=auth(srv)) as resp:
                return resp.status

        # and the command line writing at the same time, from another thread
        other = asyncio.to_thread(lambda: [picks.update_picks(
            outputs.picks_file, plan, {plan.jobs[-1].path: (picks.KEEP, 3)}) for _ in range(5)])
        statuses, _ = await asyncio.gather(asyncio.gather(*(put(i) for i in range(14))), other)
    assert set(statuses) == {200}
    stored = picks.load_picks(outputs.picks_file, plan).entries
    assert {p: e.status for p, e in stored.items()} == {j.path: "pick" for j in plan.jobs}
    assert all(stored[j.path].rating is not None for j in plan.jobs)


async def test_a_broken_picks_file_is_reported_and_never_overwritten(outputs: Outputs) -> None:
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        outputs.picks_file.write_text('{"version": 1,\n  "picks": {oops}\n}\n')
        async with http.put(base(srv.url) + "/api/picks/fox/1.png", json={"status": "pick"},
                            headers=auth(srv)) as resp:
            assert resp.status == 409
            message = (await resp.json())["error"]
        assert "not saved" in message and f"{outputs.picks_file}:2:" in message
        assert outputs.picks_file.read_text() == '{"version": 1,\n  "picks": {oops}\n}\n'
        async with http.get(base(srv.url) + "/api/items", headers=auth(srv)) as resp:
            assert resp.status == 409
        async with http.get(srv.url) as resp:
            assert resp.status == 200
            assert "cannot be read" in await resp.text()


# ---- files -----------------------------------------------------------------------------


async def test_only_images_inside_the_output_folder_are_served(outputs: Outputs,
                                                                tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret outside the output folder")
    (tmp_path / "secret.txt").write_text("secret")
    images = outputs.root / "images"
    (images / "link.png").symlink_to(secret)
    (images / "dirlink").symlink_to(tmp_path)
    (outputs.root / "notes.txt").write_text("not an image")
    async with serving(outputs) as srv:
        t = f"token={srv.review.token}"
        refused = [
            "/files/../secret.png", "/files/..%2fsecret.png", "/files/%2e%2e/secret.png",
            "/files/%2E%2E%2Fsecret.png", "/files/images/%2e%2e/%2e%2e/secret.png",
            "/files/images/..%2F..%2Fsecret.png", "/files//etc/passwd",
            "/files/%2F" + str(secret).lstrip("/").replace("/", "%2F"),
            "/files/" + str(secret), "/files/images/link.png", "/files/images/dirlink/secret.png",
            "/files/images/dirlink/secret.txt", "/files/notes.txt", "/files/results.jsonl",
            "/files/images\\..\\..\\secret.png", "/files/images/%00.png",
            "/files/./images/fox/1.png", "/files/images//fox/1.png",
        ]
        for target in refused:
            status, body = await raw_get(srv.port, f"{target}?{t}")
            assert status in (400, 403, 404), target
            assert b"secret" not in body, target
        status, body = await raw_get(srv.port, f"/files/images/fox/1.png?{t}")
        assert status == 200 and Image.open(io.BytesIO(body)).size == (240, 160)
        status, body = await raw_get(srv.port, f"/files/contact-sheet.png?{t}")
        assert status == 200 and body.startswith(b"\x89PNG")


async def test_thumbnails_are_made_on_demand_and_confined(outputs: Outputs,
                                                           tmp_path: Path) -> None:
    thumbs = outputs.root / "thumbs"
    for p in thumbs.rglob("*.jpg"):
        p.unlink()
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        async with http.get(base(srv.url) + "/thumb/fox/2.png", headers=auth(srv)) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
            img = Image.open(io.BytesIO(await resp.read()))
            assert img.format == "JPEG" and img.size == (240, 160)  # never enlarged
        assert (thumbs / "fox" / "2.jpg").is_file()
        # an image swapped for a link out of the folder is not read through the link
        image = outputs.root / "images" / "fox" / "3.png"
        outside = tmp_path / "outside.png"
        outside.write_bytes(image.read_bytes())
        image.unlink()
        image.symlink_to(outside)
        async with http.get(base(srv.url) + "/thumb/fox/3.png", headers=auth(srv)) as resp:
            assert resp.status == 404
        async with http.get(base(srv.url) + "/thumb/nope.png", headers=auth(srv)) as resp:
            assert resp.status == 404


# ---- "more like this" ---------------------------------------------------------------------


async def test_more_like_this_copies_the_image_beside_the_manifest(outputs: Outputs) -> None:
    image = outputs.root / "images" / "fox" / "2.png"
    copy = outputs.manifest.parent / "inputs" / "rv" / "fox-2.png"
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        url = base(srv.url) + "/api/more/fox/2.png"
        async with http.post(url) as resp:  # no token: nothing written
            assert resp.status == 403
        assert not copy.exists()
        async with http.post(url, headers={**auth(srv), "Origin": "http://evil.test"}) as resp:
            assert resp.status == 403
        assert not copy.exists()
        async with http.post(url, headers=auth(srv)) as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert copy.read_bytes() == image.read_bytes()
        assert doc["written"] is True and doc["input"] == str(copy)
        assert "    image: inputs/rv/fox-2.png\n" in doc["snippet"]
        assert "outputs" not in doc["snippet"]  # nothing from the ignored folder
        async with http.post(url, headers=auth(srv)) as resp:  # again: the same file kept
            assert resp.status == 200 and (await resp.json())["written"] is False
        # a file of that name holding another picture is never replaced
        copy.write_bytes(b"another picture")
        async with http.post(url, headers=auth(srv)) as resp:
            assert resp.status == 409
            assert "already exists and holds another picture" in (await resp.json())["error"]
        assert copy.read_bytes() == b"another picture"
        async with http.post(base(srv.url) + "/api/more/nope.png", headers=auth(srv)) as resp:
            assert resp.status == 404
        (outputs.root / "images" / "fox" / "3.png").unlink()  # not made: nothing to copy
        async with http.post(base(srv.url) + "/api/more/fox/3.png", headers=auth(srv)) as resp:
            assert resp.status == 404 and "make it first" in (await resp.json())["error"]
    assert [p.name for p in copy.parent.iterdir()] == ["fox-2.png"]  # no temp file left
    assert not outputs.picks_file.exists()


# ---- the page ------------------------------------------------------------------------


async def test_page_escapes_the_plan_and_marks_every_image(outputs: Outputs) -> None:
    picks.update_picks(outputs.picks_file, outputs.plan,
                       {outputs.plan.jobs[0].path: ("pick", 5)})
    async with serving(outputs) as srv, aiohttp.ClientSession() as http, \
            http.get(srv.url) as resp:
        html = await resp.text()
        assert resp.content_type == "text/html"
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>" not in html and "<style" not in html and "style=" not in html
    assert "http://" not in html and "https://" not in html
    for job in outputs.plan.jobs:
        assert f'data-path="{job.path}"' in html
    assert 'data-path="fox/1.png" data-status="pick"' in html
    assert html.count('loading="lazy"') == len(outputs.plan.jobs)


async def test_page_of_an_empty_output_folder_says_what_to_run(tmp_path: Path) -> None:
    outputs = make_outputs(tmp_path, skip=range(7), post=False)
    async with serving(outputs) as srv, aiohttp.ClientSession() as http, \
            http.get(srv.url) as resp:
        html = await resp.text()
    assert "No images yet" in html and f"imagebatch run {outputs.manifest}" in html


async def test_failed_and_missing_jobs_keep_their_place(tmp_path: Path) -> None:
    outputs = make_outputs(tmp_path, skip=[1], fail=[2])
    async with serving(outputs) as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url) as resp:
            html = await resp.text()
        async with http.get(base(srv.url) + "/api/items", headers=auth(srv)) as resp:
            items = await resp.json()
    assert [i["state"] for i in items[:3]] == ["ok", "missing", "failed"]
    assert items[1]["image"] is None and items[2]["reason"] == "refused by the service"
    assert "not made yet" in html and "refused by the service" in html


# ---- the command ---------------------------------------------------------------------


def _no_display() -> dict[str, str]:
    """This environment without a display: `review` opens no browser unless a test asks."""
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def _review(args: list[str], cwd: Path, logs: Path,
            env: dict[str, str] | None = None) -> Forked:
    """`imagebatch review ARGS` as a process of its own (forked from an interpreter that has
    imported imagebatch), its output in logs/stdout and logs/stderr."""
    full = _no_display()
    full.update(env or {})
    logs.mkdir(parents=True, exist_ok=True)
    return start_cli(["review", *args], full, cwd, stdout=logs / "stdout",
                     stderr=logs / "stderr")


async def _first_line(proc: Forked, logs: Path, timeout: float = 30) -> str:
    """The first line the command wrote to its stdout ("" if it ended without one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = logs / "stdout"
        text = path.read_text() if path.exists() else ""  # made by the child once it runs
        if "\n" in text:
            return text.split("\n", 1)[0] + "\n"
        if proc.poll() is not None:
            return text
        await asyncio.sleep(0.01)
    raise TimeoutError("no line on stdout")


async def _ended(proc: Forked, logs: Path, timeout: float = 30) -> tuple[str, str]:
    """Wait for the command's end: (its stdout, its stderr)."""
    await asyncio.to_thread(proc.wait, timeout)
    return (logs / "stdout").read_text(), (logs / "stderr").read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_command_prints_its_url_at_once_and_stops_cleanly(outputs: Outputs,
                                                                 sig: signal.Signals,
                                                                 tmp_path: Path) -> None:
    proc = _review([str(outputs.manifest), "--out", str(outputs.out), "--no-open"], ROOT,
                   tmp_path)
    try:
        line = await _first_line(proc, tmp_path)
        assert line.startswith("http://127.0.0.1:") and "/?token=" in line
        async with aiohttp.ClientSession() as http:
            async with http.get(line.strip()) as resp:
                assert resp.status == 200
            async with http.put(base(line.strip()) + "/api/picks/fox/2.png?token="
                                + line.strip().split("token=")[1],
                                json={"status": "reject"}) as resp:
                assert resp.status == 200
        proc.send_signal(sig)
        out, err = await _ended(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err
    assert out == line and "Traceback" not in err and "stopped" in err  # the URL alone
    assert picks.load_picks(outputs.picks_file).entries["fox/2.png"].status == "reject"


def test_command_errors_are_exit_2_without_traceback(outputs: Outputs, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\njobs: 7\n")
    outputs.picks_file.write_text('{"version": 1, "manifest": "rv", "picks": {"nope.png": 1}}')
    env = _no_display()
    # each command a process of its own (exit status, output), forked from one interpreter
    # that has imported imagebatch: what is checked is what the command says, not its start
    with forker() as commands:
        for args in ([str(bad), "--no-open"], [str(tmp_path / "missing.yaml"), "--no-open"],
                     [str(outputs.manifest), "--no-open"],
                     [str(outputs.manifest), "--no-open", "--port", "99999"]):
            res = commands.run(["review", *args], env, ROOT, timeout=60)
            assert res.returncode == 2, (args, res.stderr)
            assert "Traceback" not in res.stderr and res.stdout == ""
        res = commands.run(["review", str(outputs.manifest), "--no-open"], env, ROOT, timeout=60)
    assert f"{outputs.picks_file}:1:" in res.stderr and "nope.png" in res.stderr


async def test_a_port_in_use_is_exit_2(outputs: Outputs, tmp_path: Path) -> None:
    async with serving(outputs) as srv:
        proc = _review([str(outputs.manifest), "--out", str(outputs.out), "--no-open",
                        "--port", str(srv.port)], ROOT, tmp_path)
        out, err = await _ended(proc, tmp_path, 60)
    assert proc.returncode == 2 and "cannot listen" in err and out == ""


@pytest.mark.parametrize("no_open", [False, True])
async def test_a_browser_opens_only_with_a_display_and_without_no_open(
        outputs: Outputs, tmp_path: Path, no_open: bool) -> None:
    opened = tmp_path / "opened.txt"
    opener = tmp_path / "opener.sh"
    opener.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    opener.chmod(0o755)
    args = [str(outputs.manifest), "--out", str(outputs.out)] + (["--no-open"] if no_open else [])
    logs = tmp_path / "logs"
    proc = _review(args, ROOT, logs, {"DISPLAY": ":99", "BROWSER": str(opener)})
    try:
        line = (await _first_line(proc, logs)).strip()
        for _ in range(20 if no_open else 200):  # a browser is started in the background
            if opened.exists() and opened.read_text():
                break
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        await _ended(proc, logs)
    if no_open:
        assert not opened.exists()
    else:
        assert opened.read_text() == line
    assert proc.returncode == 0

"""Whole runs over real HTTP on 127.0.0.1: faults, rate limit, resume, key hygiene, signals."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image
from runner_helpers import KEY, make_plan

from imagebatch.cli import report_run
from imagebatch.commands.status import show_command
from imagebatch.errors import ConfigError
from imagebatch.planning import config
from imagebatch.providers import connect
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.running.summary import plan_doc
from imagebatch.service.server import ServerOptions, ServerStats, running_server


async def run_plans_async(plans, conn, opts, err):
    """The run's report, with each plan's summary as summary.json holds it."""
    report = await run_plans(plans, conn, opts, err)
    return [plan_doc(p) for p in report.plans], report


def api_options(**kw) -> ServerOptions:
    """The embedded server as these tests use it: bodies kept, one render process."""
    return ServerOptions(flat=True, keep_bodies=True, workers=1, **kw)


async def _run(options: ServerOptions, plans, tmp_path: Path, *,
               stats: list[ServerStats] | None = None, **kw):
    async with running_server(options) as srv:
        if stats is not None:
            stats.append(srv.stats)
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        kw.setdefault("backoff_base", 0.01)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, **kw)
        err = io.StringIO()
        summaries, state = await run_plans_async(plans, conn, opts, err)
        out = io.StringIO()
        code = report_run(state, as_json=False, out=out, err=err)
        return code, summaries, out.getvalue() + err.getvalue(), srv.stats


def _images(tmp_path: Path, name: str = "demo") -> list[Path]:
    return sorted(p for p in (tmp_path / "out" / name / "images").rglob("*") if p.is_file())


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001
        return False


async def test_run_then_rerun_sends_nothing(tmp_path):
    plan = make_plan(6)
    async with running_server(api_options(key=KEY)) as srv:
        api, url = srv.stats, srv.url
        conn = connect.Connection(prefix="DIFFUSION", url=url, key=KEY)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, concurrency=3, rpm=6000)
        (summary,), state = await run_plans_async([plan], conn, opts, io.StringIO())
        assert api.requests == 6 and state.succeeded == 6
        assert summary["succeeded"] == 6 and summary["requests"] == 6 and summary["failures"] == []
        assert summary["backend"] == url
        images = _images(tmp_path)
        assert len(images) == 6 and all(_decodes(p) for p in images)
        # the bodies the server got are exactly the plan's
        assert sorted(api.bodies) == sorted(j.body.encode() for j in plan.jobs)
        (summary,), _ = await run_plans_async([plan], conn, opts, io.StringIO())
        assert api.requests == 6
        assert (summary["skipped"], summary["succeeded"], summary["requests"]) == (6, 0, 0)
        on_disk = json.loads((tmp_path / "out/demo/summary.json").read_text())
        assert on_disk["skipped"] == 6


async def test_faults_are_retried_and_nothing_corrupt_is_kept(tmp_path):
    plan = make_plan(8)
    api = api_options(script={1: "500", 2: "html", 3: "truncate", 4: "wrong-size", 5: "reset"})
    code, (summary,), text, _ = await _run(api, [plan], tmp_path, concurrency=2, rpm=6000,
                                           retries=3)
    assert code == 0, text
    assert summary["succeeded"] == 8 and summary["requests"] == 13
    assert all(_decodes(p) for p in _images(tmp_path))
    with Image.open(_images(tmp_path)[0]) as img:
        assert img.size == (1024, 1024)


async def test_permanent_400_fails_at_once_and_exit_1(tmp_path):
    plan = make_plan(3, prompt="a fox [[fail:400]]")
    code, (summary,), text, api = await _run(api_options(), [plan], tmp_path, rpm=6000)
    assert code == 1 and api.requests == 3
    refused = "HTTP 400 (requested by [[fail:400]] in the prompt)"
    assert summary["failed"] == 3 and [f["reason"] for f in summary["failures"]] == \
        [refused] * 3
    assert [f["path"] for f in summary["failures"]] == [j.path for j in plan.jobs]
    assert f"FAILED fox/1.png: {refused}" in text
    recs = [json.loads(x) for x in (tmp_path / "out/demo/results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["failed"] * 3


async def test_401_stops_the_run_exit_2_names_variable_never_the_key(tmp_path):
    plan = make_plan(10)
    code, (summary,), text, api = await _run(api_options(key="inf-the-right-one"), [plan],
                                             tmp_path, concurrency=2, rpm=6000)
    assert code == 2
    assert "check DIFFUSION_KEY" in text and KEY not in text
    assert api.requests <= 2 and summary["succeeded"] == 0


async def test_rate_limit_headers_avoid_429_in_steady_state(tmp_path):
    plan = make_plan(12)
    # Ask for a rate above the limit: the headers must hold the client back.
    code, (summary,), text, api = await _run(api_options(rpm=4, window=1.0), [plan], tmp_path,
                                             concurrency=4, rpm=6000)
    assert code == 0, text
    assert summary["succeeded"] == 12
    assert api.by_status[429] == 0, dict(api.by_status)


async def test_changed_job_regenerates_alone_and_force_regenerates_all(tmp_path):
    async with running_server(api_options()) as srv:
        api = srv.stats
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=6000)
        err = io.StringIO()
        plan = make_plan(4)
        await run_plans_async([plan], conn, opts, err)
        assert api.requests == 4
        from dataclasses import replace

        from runner_helpers import make_job
        changed = make_job(2, prompt="a red fox", seed=3)
        plan2 = replace(plan, jobs=plan.jobs[:2] + (changed,) + plan.jobs[3:])
        (s,), _ = await run_plans_async([plan2], conn, opts, err)
        assert api.requests == 5 and s["succeeded"] == 1 and s["skipped"] == 3
        (s,), _ = await run_plans_async([plan2], conn, opts, err)
        assert api.requests == 5
        (s,), _ = await run_plans_async([plan2], conn, replace(opts, force=True), err)
        assert api.requests == 9 and s["succeeded"] == 4
        # local results never stand in for this remote backend, nor the reverse
        from imagebatch.storage.store import Store
        st = Store(tmp_path / "out", "demo", "local")
        st.load()
        assert not any(st.is_done(j) for j in plan2.jobs)


async def test_key_never_written_anywhere(tmp_path):
    plan = make_plan(4)
    code, _, text, _ = await _run(api_options(key=KEY, script={2: "500"}), [plan], tmp_path,
                                  rpm=6000, verbose=2)
    assert code == 0 and KEY not in text
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


async def test_show_prints_the_body_ready_to_replay(tmp_path, capsys):
    plan = make_plan(1)
    await _run(api_options(), [plan], tmp_path, rpm=6000)
    (image,) = _images(tmp_path)
    out = io.StringIO()
    assert show_command(str(image), out=out) == 0
    assert out.getvalue().strip() == plan.jobs[0].body


def test_url_without_key_is_a_config_error_naming_the_fix():
    with pytest.raises(ConfigError) as info:
        connect.connection({"INFERENCE_URL": "https://x.example"}, "INFERENCE")
    msg = str(info.value)
    assert "INFERENCE_KEY is not" in msg and "heroku config:get -a APP INFERENCE_KEY" in msg
    assert info.value.exit_code == 2


def test_connection_repr_hides_the_key():
    conn = connect.connection({"DIFFUSION_URL": "https://x.example", "DIFFUSION_KEY": KEY})
    assert KEY not in repr(conn) and conn.key == KEY
    assert connect.connection({}).local
    assert connect.connection({"DIFFUSION_URL": "https://x.example"}, local=True).local


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.1:65536", "not a valid URL"),
    ("http://127.0.0.1:abc", "not a valid URL"),
    ("http://[::1", "not a valid URL"),
    ("https://x.example/?key=s3cr3t-in-query", "'?' query or '#' part"),
    ("https://x.example/#frag", "'?' query or '#' part"),
    ("https://x.example?", "'?' query or '#' part"),
    ("ftp://x.example", "not an http(s) URL"),
])
def test_urls_that_cannot_work_are_config_errors_that_do_not_repeat_them(url, words):
    with pytest.raises(ConfigError) as info:
        connect.connection({"DIFFUSION_URL": url, "DIFFUSION_KEY": KEY})
    assert words in str(info.value) and info.value.exit_code == 2
    assert "s3cr3t" not in str(info.value) and "65536" not in str(info.value)


@pytest.mark.parametrize("url", [
    "https://us.inference.heroku.com", "https://us.inference.heroku.com/",
    "https://us.inference.heroku.com/v1", "https://us.inference.heroku.com/v1/",
    "https://us.inference.heroku.com/v1/images/generations", "HTTPS://us.inference.heroku.com",
])
def test_a_copied_v1_or_endpoint_path_is_the_same_base_url(url):
    conn = connect.connection({"DIFFUSION_URL": url, "DIFFUSION_KEY": KEY})
    assert conn.url == "https://us.inference.heroku.com"


@pytest.mark.parametrize("key", ["inf-abc\ndef", "inf-abc\rdef", "inf-abc def",
                                 "inf-abc\u2019def", "inf-\x00abc"])
def test_a_key_no_http_header_can_carry_is_refused_before_anything_is_sent(key):
    with pytest.raises(ConfigError) as info:
        connect.connection({"DIFFUSION_URL": "https://x.example", "DIFFUSION_KEY": key})
    assert "DIFFUSION_KEY has a character" in str(info.value) and key not in str(info.value)


def test_default_model_from_env():
    assert config.default_model({}) == "stable-image-ultra"
    assert config.default_model({"X_MODEL_ID": "m2"}, "X") == "m2"



def test_cli_show_and_bad_options(tmp_path, capsys):
    from runner_helpers import image_bytes, make_job

    from imagebatch.cli import main
    from imagebatch.storage.metadata import embed

    job = make_job(fmt="jpeg")
    img = tmp_path / "x.jpg"
    img.write_bytes(embed(image_bytes("jpeg", (64, 64)), job.body))
    assert main(["show", str(img)]) == 0
    assert capsys.readouterr().out.strip() == job.body
    assert main(["show", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["show", str(tmp_path)]) == 2
    assert "a folder; give one image file" in capsys.readouterr().err
    assert main(["run", "m.yaml", "--concurrency", "0"]) == 2
    assert main(["run", "m.yaml", "--shard", "3/2"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_cli_show_names_what_a_path_is_when_it_is_not_an_image_file(tmp_path, capsys):
    from imagebatch.cli import main

    assert main(["show", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert "/dev/null: not a regular file (a character device); give one image file" in err
    assert "no such file" not in err and "Traceback" not in err
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would block: the kind is told before anything is opened
    assert main(["show", str(fifo)]) == 2
    assert "not a regular file (a named pipe)" in capsys.readouterr().err
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert main(["show", str(tmp_path / "dangling.png")]) == 2
    assert "dangling.png: a broken link" in capsys.readouterr().err
    (tmp_path / "plain.txt").write_text("x")
    assert main(["show", str(tmp_path / "plain.txt" / "x.png")]) == 2
    assert "no such file" in capsys.readouterr().err


async def test_a_second_run_into_the_same_folder_is_refused_and_touches_nothing(tmp_path):
    import fcntl

    from imagebatch.errors import StoreError

    folder = tmp_path / "out" / "demo"
    (folder / "images").mkdir(parents=True)
    live_tmp = folder / "images" / ".tmp-1.png.99.1"  # another run's image being written
    live_tmp.write_bytes(b"half")
    # Another run holds the folder as a run does: results.jsonl open and flock'ed (a lock
    # belongs to an open file, so this handle conflicts with the run's own as another
    # process's would).
    with open(folder / "results.jsonl", "ab") as other_run:  # noqa: ASYNC230 - test set-up
        fcntl.flock(other_run, fcntl.LOCK_EX)
        seen: list[ServerStats] = []
        with pytest.raises(StoreError, match="another imagebatch run is writing to"):
            await _run(api_options(key=KEY), [make_plan(3)], tmp_path, stats=seen)
        assert seen[0].requests == 0 and live_tmp.read_bytes() == b"half"
    code, (summary,), _text, api = await _run(api_options(key=KEY), [make_plan(3)], tmp_path)
    assert code == 0 and summary["succeeded"] == 3 and api.requests == 3
    assert not live_tmp.exists()  # the other run is gone: its leftover is swept as usual


def test_status_checks_the_url_as_run_does_and_names_the_same_backend(tmp_path, capsys):
    from imagebatch.commands.status import status_command

    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nname: st\njobs:\n  - id: a\n    prompt: p\n    seeds: 1\n")
    with pytest.raises(ConfigError, match="not a valid URL"):
        status_command(str(manifest), out_dir=tmp_path, env={"DIFFUSION_URL": "http://h:99999"})
    for url in ("https://us.inference.heroku.com/v1/", "https://us.inference.heroku.com"):
        assert status_command(str(manifest), out_dir=tmp_path, env={"DIFFUSION_URL": url}) == 0
        assert "backend https://us.inference.heroku.com," in capsys.readouterr().out


async def test_image_downloads_count_as_requests_in_the_summary(tmp_path):
    from aiohttp import web
    from runner_helpers import image_bytes

    from imagebatch.planning import apispec

    seen = {"POST": 0, "GET": 0}

    async def generate(request: web.Request) -> web.Response:
        seen["POST"] += 1
        await request.read()
        return web.json_response({"created": 1, "data": [{"url": "/files/x.png"}]})

    async def download(request: web.Request) -> web.Response:
        seen["GET"] += 1
        return web.Response(body=image_bytes(), content_type="image/png")

    app = web.Application()
    app.router.add_post(apispec.ENDPOINT, generate)
    app.router.add_get("/files/x.png", download)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        conn = connect.Connection(prefix="DIFFUSION", url=f"http://127.0.0.1:{port}", key=KEY)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=6000)
        (summary,), _ = await run_plans_async([make_plan(3)], conn, opts, io.StringIO())
    finally:
        await runner.cleanup()
    assert seen == {"POST": 3, "GET": 3} and summary["succeeded"] == 3
    assert summary["requests"] == 6  # HTTP requests sent: the POSTs and the downloads


def test_flat_placeholders_are_asked_for_by_the_environment(tmp_path, monkeypatch, capsys):
    from imagebatch.cli import main

    manifest = tmp_path / "flat.yaml"
    manifest.write_text("version: 1\nname: flat\njobs:\n  - id: fox\n    prompt: a fox\n"
                        "    seeds: [1, 2]\n    aspect_ratio: '16:9'\n")
    out = tmp_path / "out"
    # a value that is neither kind is refused before anything is made or written
    monkeypatch.setenv("IMAGEBATCH_PLACEHOLDERS", "flatt")
    assert main(["run", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "IMAGEBATCH_PLACEHOLDERS is 'flatt': use landscape or flat" in err
    assert "Traceback" not in err and not out.exists()

    monkeypatch.setenv("IMAGEBATCH_PLACEHOLDERS", "flat")
    assert main(["run", str(manifest), "--out", str(out)]) == 0
    images = sorted((out / "flat" / "images").rglob("*.png"))
    assert len(images) == 2
    colours = []
    for path in images:
        with Image.open(path) as im:
            im.load()
            assert im.size == (1344, 768) and im.format == "PNG"
            found = im.convert("RGB").getcolors(4)
            assert found is not None and len(found) == 1  # one colour: a flat picture
            colours.append(found[0][1])
    assert colours[0] != colours[1]  # each seed its own

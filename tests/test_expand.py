"""`imagebatch expand`: prompts from a brief, asked of a chat model and frozen in a lock."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
from aiohttp import web
from runner_helpers import KEY

from imagebatch.cli import main
from imagebatch.commands.expand import expand
from imagebatch.errors import AuthError, ManifestError
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.promptlock import parse_lock
from imagebatch.providers import connect
from imagebatch.running.chat import ChatAnswerError
from imagebatch.running.options import RunOptions
from imagebatch.running.run import run_plans
from imagebatch.service.server import ServerOptions, running_server

MANIFEST = """
    version: 1
    jobs:
      - id: robots
        prompts: {brief: "BRIEF", count: 3, vary: "the garden", keep: "red paint"}
        seeds: [1, 2]
      - id: fox
        prompt: "a fox"
        seeds: [3]
"""


def write(tmp_path: Path, brief: str = "a small robot gardener") -> str:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(MANIFEST.replace("BRIEF", brief)).lstrip("\n"),
                    encoding="utf-8")
    return str(path)


def lock_of(tmp_path: Path) -> Path:
    return tmp_path / "m.prompts.lock"


def run_expand(manifest: str, env: dict[str, str] | None = None, **kw: object) -> str:
    out, err = io.StringIO(), io.StringIO()
    expand(manifest, env=env or {}, out=out, err=err, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def test_expand_offline_writes_a_lock_and_plans_are_byte_identical(tmp_path: Path) -> None:
    manifest = write(tmp_path)
    with pytest.raises(ManifestError) as info:
        load_plan(manifest)
    (problem,) = info.value.problems
    assert (problem.line, problem.column, problem.path) == (4, 14, "jobs[0].prompts")
    assert "imagebatch expand" in problem.message
    shown = run_expand(manifest, now=lambda: "2030-01-01T00:00:00Z")
    entry = parse_lock(lock_of(tmp_path).read_bytes(), "lock")["robots"]
    assert len(entry.prompts) == 3 and len(set(entry.prompts)) == 3
    assert entry.brief == "a small robot gardener" and entry.written == "2030-01-01T00:00:00Z"
    for prompt in entry.prompts:
        assert prompt in shown
    plan = load_plan(manifest)
    first = [(j.path, j.key, j.body) for j in plan.jobs]
    assert first == [(j.path, j.key, j.body) for j in load_plan(manifest).jobs]
    assert [j.path for j in plan.jobs] == ["robots/p1/1.png", "robots/p1/2.png",
                                          "robots/p2/1.png", "robots/p2/2.png",
                                          "robots/p3/1.png", "robots/p3/2.png", "fox/3.png"]
    assert [j.request["prompt"] for j in plan.jobs[::2][:3]] == list(entry.prompts)
    # nothing stale: nothing sent, the lock unchanged
    before = lock_of(tmp_path).read_bytes()
    assert "nothing was sent" in run_expand(manifest)
    assert lock_of(tmp_path).read_bytes() == before


@pytest.mark.parametrize("fault, said", [
    ("few", "2 prompts for a brief that asks for 3"),
    ("many", "4 prompts for a brief that asks for 3"),
    ("duplicate", "duplicate"),
    ("empty", "is empty"),
    ("long", "10,001 characters"),
    ("refuse", "can't help"),
    ("malformed", "did not answer"),
])
def test_unusable_answers_are_refused_and_nothing_is_written(tmp_path: Path, fault: str,
                                                             said: str) -> None:
    manifest = write(tmp_path, f"a robot [[chat:{fault}]]")
    with pytest.raises(ChatAnswerError) as info:
        run_expand(manifest)
    assert said in str(info.value) and "nothing was written" in str(info.value)
    assert not lock_of(tmp_path).exists()


class Recorder:
    """A chat service on 127.0.0.1 that records what it receives and answers from a script."""

    def __init__(self, answers: list[tuple[int, dict[str, object]]]) -> None:
        self.answers = answers
        self.received: list[tuple[dict[str, str], dict[str, object]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        status, doc = self.answers.pop(0)
        headers = {"Retry-After": "2"} if status == 429 else {}
        return web.json_response(doc, status=status, headers=headers)


def good_answer(prompts: list[str]) -> dict[str, object]:
    return {"choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": [
        {"type": "function", "function": {"name": "write_prompts",
                                          "arguments": json.dumps({"prompts": prompts})}}]}}]}


async def serve(recorder: Recorder) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_the_request_sent_and_a_429_then_success(tmp_path: Path) -> None:
    import asyncio

    recorder = Recorder([(429, {"error": {"code": 429, "message": "slow down"}}),
                         (200, good_answer(["one robot", "two robots", "three robots"]))])
    runner, url = await serve(recorder)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    try:
        env = {"INFERENCE_URL": url + "/v1", "INFERENCE_KEY": KEY,
               "INFERENCE_MODEL_ID": "claude-4-5-haiku"}
        await asyncio.to_thread(run_expand, write(tmp_path), env, sleep=sleep)
    finally:
        await runner.cleanup()
    assert len(recorder.received) == 2
    assert 2.0 in waits  # Retry-After believed
    headers, body = recorder.received[1]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body["model"] == "claude-4-5-haiku"
    assert body["max_tokens"] <= 1000
    assert body["tool_choice"] == {"type": "function", "function": {"name": "write_prompts"}}
    user = body["messages"][-1]["content"]  # type: ignore[index]
    assert "a small robot gardener" in user and "the garden" in user and "red paint" in user
    entry = parse_lock(lock_of(tmp_path).read_bytes(), "lock")["robots"]
    assert entry.prompts == ("one robot", "two robots", "three robots")
    assert entry.model == "claude-4-5-haiku"


async def test_a_wrong_key_stops_names_the_variable_never_prints_it(tmp_path: Path,
                                                                   capsys) -> None:
    import asyncio

    recorder = Recorder([(401, {"error": {"code": 401, "message": "Invalid API key"}})])
    runner, url = await serve(recorder)
    manifest = write(tmp_path)
    try:
        env = {"INFERENCE_URL": url, "INFERENCE_KEY": KEY}
        with pytest.raises(AuthError) as info:
            await asyncio.to_thread(run_expand, manifest, env)
        assert "INFERENCE_KEY" in str(info.value) and KEY not in str(info.value)
        mp = pytest.MonkeyPatch()
        for name, value in env.items():
            mp.setenv(name, value)
        recorder.answers.append((401, {"error": {"code": 401, "message": "bad " + KEY}}))
        code = await asyncio.to_thread(main, ["expand", manifest])
        mp.undo()
    finally:
        await runner.cleanup()
    captured = capsys.readouterr()
    assert code == 2 and "INFERENCE_KEY" in captured.err
    assert KEY not in captured.out + captured.err
    assert len(recorder.received) == 2  # not retried
    assert not lock_of(tmp_path).exists()


async def test_a_prompt_edited_by_hand_resends_exactly_its_jobs(tmp_path: Path) -> None:
    import asyncio

    manifest = write(tmp_path)
    await asyncio.to_thread(run_expand, manifest)
    async with running_server(ServerOptions(flat=True)) as srv:
        conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key=KEY)
        opts = RunOptions(manifests=(), out=tmp_path / "out", post=False, rpm=0)
        await run_plans([load_plan(manifest)], conn, opts, io.StringIO())
        assert srv.stats.requests == 7
        lock = lock_of(tmp_path)
        entry = parse_lock(lock.read_bytes(), "lock")["robots"]
        lock.write_text(lock.read_text(encoding="utf-8").replace(
            entry.prompts[1], "a robot watering tulips, by hand"), encoding="utf-8")
        plan = load_plan(manifest)
        await run_plans([plan], conn, opts, io.StringIO())
        assert srv.stats.requests == 9  # p2's two seeds, nothing else
        sent = {j.request["prompt"] for j in plan.jobs if j.path.startswith("robots/p2/")}
        assert sent == {"a robot watering tulips, by hand"}


def test_a_brief_changed_without_expand_is_exit_2_at_its_place(tmp_path: Path,
                                                              capsys) -> None:
    manifest = write(tmp_path)
    run_expand(manifest)
    write(tmp_path, "a tall robot gardener")
    assert main(["run", manifest, "--local", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "m.yaml:4:14: jobs[0].prompts: this brief changed since its prompts were " \
           "written" in err
    assert "imagebatch expand" in err
    assert not (tmp_path / "out").exists()


def test_show_names_the_brief_an_image_came_from(tmp_path: Path, monkeypatch, capsys) -> None:
    manifest = write(tmp_path)
    run_expand(manifest)
    monkeypatch.delenv("DIFFUSION_URL", raising=False)
    assert main(["run", manifest, "--out", str(tmp_path / "out"), "--no-post"]) == 0
    images = tmp_path / "out" / "m" / "images"
    written = sorted(images.rglob("p*/*.png"))
    capsys.readouterr()
    assert main(["show", str(written[0])]) == 0
    shown = capsys.readouterr()
    request = json.loads(shown.out)  # standard output stays the body to send again
    assert request["prompt"] in parse_lock(lock_of(tmp_path).read_bytes(), "l")["robots"].prompts
    assert "from the brief of job robots: 'a small robot gardener'" in shown.err
    assert str(lock_of(tmp_path)) in shown.err
    # an image of a written prompt only: a plain job names no brief
    plain = next(p for p in images.rglob("*.png") if "/p" not in str(p.relative_to(images)))
    assert main(["show", str(plain)]) == 0
    assert capsys.readouterr().err == ""

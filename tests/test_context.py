"""One context for every command: with a mixed pool (`--env-prefix POOLH,POOLS`, a Heroku and
a Stability member), every command sees the jobs `run` made as done, under whichever key
each was sent: `status`, `plan`, `sheet`, `pull`, `push`, `export`, `pick`, `review`,
`diff`. Before the context, `pull`, `push`, `export`, `pick` and `review` planned with the
first prefix only and missed the Stability member's images."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from stress_helpers import in_thread

from imagebatch.assets.review import ReviewOptions
from imagebatch.cli import main
from imagebatch.service.server import ServerOptions, running_server
from imagebatch.storage.context import resolve
from imagebatch.storage.metadata import read_request

HKEY = "inf-HEROKU-context-0a1b2c3d"
SKEY = "sk-STABILITY-context-9f8e7d6c"
MANIFEST = ("version: 1\nname: mixed\njobs:\n  - id: fox\n    prompt: a fox\n"
            "    seeds: {start: 1, count: 8}\n"
            "exports:\n  - name: web\n    from: all\n    path: \"{id}/{seed}.{format}\"\n"
            "    width: [256]\n    format: [jpeg]\n")


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory: pytest.TempPathFactory):
    """One mixed-pool run into a folder, with a shared folder cache: (tmp, env, counts of
    requests each server received)."""
    tmp = tmp_path_factory.mktemp("ctx")
    (tmp / "m.yaml").write_text(MANIFEST, encoding="utf-8")
    (tmp / "share").mkdir()
    with in_thread(lambda: running_server(ServerOptions(flat=True, key=HKEY))) as h, \
            in_thread(lambda: running_server(ServerOptions(flat=True, key=SKEY))) as s:
        env = {"POOLH_URL": h.url, "POOLH_KEY": HKEY,
               "POOLS_URL": s.url, "POOLS_KEY": SKEY, "POOLS_PROVIDER": "stability"}
        yield tmp, env, (h, s)


def _cli(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(list(args))


def test_every_command_sees_a_mixed_pools_jobs_done_as_run_does(pool_run, monkeypatch, capsys):
    tmp, env, (h, s) = pool_run
    m, out = str(tmp / "m.yaml"), str(tmp / "out")
    pool = ("--env-prefix", "POOLH,POOLS")
    assert _cli(monkeypatch, env, "run", m, "--out", out, "--cache", str(tmp / "share"),
                "--rpm", "6000", "--concurrency", "4", *pool) == 0
    records = [json.loads(line) for line in
               (tmp / "out" / "mixed" / "results.jsonl").read_text().splitlines()]
    made_by = Counter(r.get("member") for r in records if r["status"] == "ok")
    # both members made some: the Stability member's images are under Stability keys
    assert set(made_by) == {"POOLH", "POOLS"}, made_by
    sent = h.stats.requests + s.stats.requests
    assert sent == 8
    capsys.readouterr()

    # status and plan: all 8 done, nothing to send
    assert _cli(monkeypatch, env, "status", m, "--out", out, "--json", *pool) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["done"], doc["pending"], doc["failed"]) == (8, 0, 0)
    assert _cli(monkeypatch, env, "plan", m, "--out", out, "--counts-json", *pool) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["done"] == 8 and counts["to_send"] == 0, counts

    # export: every image exported, whichever member made it; decoded
    assert _cli(monkeypatch, env, "export", m, "--out", out, "--assets",
                str(tmp / "assets"), *pool) == 0
    exported = sorted((tmp / "assets" / "mixed").rglob("*.jpeg"))
    assert len(exported) == 8
    for path in exported:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.width == 256
    # each asset embeds and names the request that made its image: a Stability member's
    # image its Stability request (with `provider`), not the Heroku one of the plan
    sent_keys = {r["path"]: r["key"] for r in records if r["status"] == "ok"}
    assets = json.loads((tmp / "assets" / "mixed" / "assets.json").read_text())
    files = assets["files"] if isinstance(assets, dict) else assets
    for entry in files:
        src = entry["source"]
        assert src["key"] == sent_keys[src["path"]], entry
        request = read_request(tmp / "assets" / "mixed" / entry["file"])
        member = next(r["member"] for r in records if r.get("key") == src["key"])
        assert ("provider" in request) == (member == "POOLS"), request

    # pick: a Stability member's image is a known image of the plan
    stab = next(r["path"] for r in records if r.get("member") == "POOLS" and r["status"] == "ok")
    assert _cli(monkeypatch, env, "pick", m, stab, "--out", out, *pool) == 0
    picked = capsys.readouterr().out
    assert f"{stab}: nothing -> picked" in picked and "picked 1," in picked, picked
    assert "stale 0" in picked, picked

    # review: the page's view judges every image done
    opts = ReviewOptions(manifest=m, out=Path(out), env_prefixes=pool[1:])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = resolve([opts.manifest], env_prefixes=opts.env_prefixes, out_dir=opts.out)
    from imagebatch.storage.store import DONE, job_states
    assert all(st.state == DONE for st in job_states(ctx.plan.jobs, ctx.root(ctx.plan),
                                                     ctx.judged))

    # push: everything is already there (the run uploaded it), none "not done here"
    assert _cli(monkeypatch, env, "push", m, "--out", out, "--cache", str(tmp / "share"),
                *pool) == 0
    pushed = capsys.readouterr().out
    assert "0 not done here" in pushed and "8 already there" in pushed, pushed

    # pull into an empty folder: all 8 restored, none "not in the cache", no request sent
    shutil.rmtree(tmp / "out")
    assert _cli(monkeypatch, env, "pull", m, "--out", out, "--cache", str(tmp / "share"),
                *pool) == 0
    pulled = capsys.readouterr().out
    assert "pulled 8 image(s)" in pulled and "0 not in the cache" in pulled, pulled
    assert h.stats.requests + s.stats.requests == sent
    assert _cli(monkeypatch, env, "status", m, "--out", out, "--json", *pool) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 8

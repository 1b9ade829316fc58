"""Asset generation as a build: make targets, `run --json`, step summaries, shards + merge,
and the nightly workflow file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from stress_helpers import forked_imagebatch
from tool_helpers import check_jsonschema, tool

from imagebatch.cli import main

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "imagebatch.yml"
BIN = Path(sys.executable).parent

SMALL = """\
version: 1
seeds: [1, 2]
jobs:
  - id: {name}
    prompt: "A small {name} test image, {{tone}}"
    matrix:
      tone: [warm, cool]
"""

SWEEP = """\
version: 1
name: sweep
defaults:
  output_format: jpeg
jobs:
  - id: fox
    prompt: "A fox, {style}"
    matrix:
      style: [ink, clay]
    seeds: {start: 10, count: 4}
  - id: boat
    prompt: "A paper boat"
    aspect_ratio: "16:9"
    seeds: [5, 6, 7]
"""



def _tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFUSION_", "MAKE"))}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args,
         f"MANIFEST_DIR={tmp_path / 'manifests'}", f"OUT={tmp_path / 'out'}",
         f"VENV={BIN.parent}", f"IMAGEBATCH={forked_imagebatch()}"],
        capture_output=True, text=True, env=env, timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_assets_runs_only_what_is_out_of_date(tmp_path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    for name in ("alpha", "beta"):
        (mdir / f"{name}.yaml").write_text(SMALL.format(name=name))
    first = _make(tmp_path, "assets")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in ("alpha", "beta")}
    assert all(s["succeeded"] == 4 and s["requests"] == 4 for s in summaries.values())
    before = _tree(out)

    second = _make(tmp_path, "assets")
    assert second.returncode == 0, second.stderr
    assert "imagebatch run" not in second.stdout  # make decided nothing is out of date
    assert _tree(out) == before  # nothing rebuilt: same files, same bytes

    later = time.time() + 5
    os.utime(mdir / "beta.yaml", (later, later))  # touch one manifest
    third = _make(tmp_path, "assets")
    assert third.returncode == 0, third.stderr
    assert third.stdout.count("imagebatch run") == 1 and "beta.yaml" in third.stdout
    beta = json.loads((out / "beta" / "summary.json").read_text())
    assert beta["requests"] == 0 and beta["skipped"] == 4  # re-run, but nothing re-paid
    after = _tree(out)
    assert {k: v for k, v in after.items() if k.startswith("alpha/")} == \
        {k: v for k, v in before.items() if k.startswith("alpha/")}


def test_run_json_matches_summary_and_writes_step_summary(tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(SWEEP)
    step = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    code = main(["run", str(manifest), "--out", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    doc = json.loads(captured.out)  # stdout is only the JSON summary
    on_disk = json.loads((tmp_path / "out" / "sweep" / "summary.json").read_text())
    assert doc == on_disk
    assert doc["planned"] == 11 and doc["succeeded"] == 11 and doc["failed"] == 0
    assert "embedded local server" in captured.err  # messages stay on stderr
    text = step.read_text()
    assert "| `sweep` | 11 | 11 | 0 | 0 | 0 | 11 |" in text
    assert "contact-sheet.png" in text


def test_step_summary_lists_failures(tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("version: 1\njobs:\n  - id: ok\n    prompt: fine\n    seeds: 1\n"
                        "  - id: refused\n    prompt: 'nope [[fail:400]]'\n    seeds: 1\n")
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    code = main(["run", str(manifest), "--out", str(tmp_path / "out"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["failed"] == 1 and doc["succeeded"] == 1
    text = step.read_text()
    assert "1 failed job(s)" in text and "refused/1.png" in text


def test_three_shards_merged_equal_an_unsharded_run(tmp_path, capsys):
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(SWEEP)
    assert main(["run", str(manifest), "--out", str(tmp_path / "whole")]) == 0
    sizes = []
    for k in (1, 2, 3):
        assert main(["run", str(manifest), "--out", str(tmp_path / f"shard{k}"),
                     "--shard", f"{k}/3", "--no-post"]) == 0
        sizes.append(json.loads((tmp_path / f"shard{k}" / "sweep" / "summary.json")
                                .read_text())["planned"])
    assert sum(sizes) == 11 and all(sizes)  # the shards partition the plan
    code = main(["merge", *(str(tmp_path / f"shard{k}") for k in (1, 2, 3)),
                 "--out", str(tmp_path / "merged")])
    assert code == 0, capsys.readouterr().err
    whole, merged = tmp_path / "whole" / "sweep", tmp_path / "merged" / "sweep"
    assert _tree(whole / "images") == _tree(merged / "images")  # same images, same bytes

    def keys(root: Path) -> set[tuple[str, str, str]]:
        return {(r["key"], r["path"], r["status"]) for r in map(
            json.loads, (root / "results.jsonl").read_text().splitlines())}

    assert keys(whole) == keys(merged) and len(keys(merged)) == 11
    sheets = sorted(p.name for p in whole.glob("contact-sheet*.png"))
    assert sheets and sheets == sorted(p.name for p in merged.glob("contact-sheet*.png"))
    for name in sheets:
        with Image.open(whole / name) as a, Image.open(merged / name) as b:
            assert a.size == b.size
            assert ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None
    assert (merged / "index.html").is_file()
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["succeeded"] == 11 and summary["pending"] == 0


def test_merge_reports_a_missing_shard(tmp_path, capsys):
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(SWEEP)
    assert main(["run", str(manifest), "--out", str(tmp_path / "s1"), "--shard", "1/3",
                 "--no-post"]) == 0
    code = main(["merge", str(tmp_path / "s1"), "--out", str(tmp_path / "m"), "--no-post"])
    captured = capsys.readouterr()
    assert code == 1 and "in no shard's outputs" in captured.err


def test_merge_refuses_bad_input(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(tmp_path / "empty"), "--out", str(tmp_path / "empty")]) == 2


def test_workflow_matches_the_github_schema():
    code, said = check_jsonschema("--builtin-schema", "vendor.github-workflows", str(WORKFLOW))
    assert code == 0, said


def test_workflow_has_no_zizmor_findings_of_medium_or_higher():
    proc = subprocess.run([tool("zizmor"), "--offline", "--min-severity", "medium",
                           "--format", "json", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


def test_workflow_pins_actions_and_keeps_least_privilege():
    text = WORKFLOW.read_text()
    uses = [line.split("uses:")[1].split("#")[0].strip()
            for line in text.splitlines() if "uses:" in line]
    assert uses and all(len(u.split("@")[1]) == 40 for u in uses)  # pinned by commit
    assert "permissions: {}" in text and "contents: write" not in text
    assert "concurrency:" in text and "cancel-in-progress: false" in text
    assert "--rpm" in text and "--shard" in text and "imagebatch merge" in text
    for secret in ("DIFFUSION_URL", "DIFFUSION_KEY", "DIFFUSION_MODEL_ID"):
        assert f"secrets.{secret}" in text


def _shards(tmp_path: Path) -> Path:
    """The SWEEP manifest run as three shards into shard1..3 (no post-processing)."""
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(SWEEP)
    for k in (1, 2, 3):
        assert main(["run", str(manifest), "--out", str(tmp_path / f"shard{k}"),
                     "--shard", f"{k}/3", "--no-post"]) == 0
    return manifest


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]


def test_sheet_that_cannot_be_written_exits_2_without_traceback(tmp_path, capsys):
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(SWEEP)
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--out", str(out)]) == 0
    (out / "sweep" / "index.html").unlink()
    (out / "sweep" / "index.html").mkdir()
    capsys.readouterr()
    assert main(["sheet", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagebatch: cannot write ") and "index.html" in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_merge_into_a_file_is_refused(tmp_path, capsys):
    _shards(tmp_path)
    shards = [str(tmp_path / f"shard{k}") for k in (1, 2, 3)]
    outfile = tmp_path / "outfile"
    outfile.write_text("")
    capsys.readouterr()
    assert main(["merge", *shards, "--out", str(outfile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagebatch: ") and "not a folder" in err and "Traceback" not in err
    assert outfile.read_text() == ""


def test_merge_into_one_of_its_sources_is_refused(tmp_path, capsys):
    manifest = _shards(tmp_path)
    before = _tree(tmp_path / "shard1")
    folders = [str(tmp_path / f"shard{k}" / "sweep") for k in (1, 2, 3)]
    assert main(["merge", *folders, "--out", str(tmp_path / "shard1"),
                 "--manifest", str(manifest)]) == 2
    assert "is one of the folders being merged" in capsys.readouterr().err
    assert _tree(tmp_path / "shard1") == before  # the shard's own results left alone


def test_merge_that_cannot_write_exits_2(tmp_path, capsys, monkeypatch):
    _shards(tmp_path)
    real = os.replace

    def refuse(src, dst, *args, **kwargs):
        if str(tmp_path / "merged") in str(dst):
            raise OSError(28, os.strerror(28), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    capsys.readouterr()
    assert main(["merge", *(str(tmp_path / f"shard{k}") for k in (1, 2, 3)),
                 "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagebatch: cannot write ") and "No space left" in err, err


def test_merge_into_finished_outputs_keeps_what_they_have(tmp_path, capsys):
    manifest = _shards(tmp_path)
    whole = tmp_path / "whole"
    assert main(["run", str(manifest), "--out", str(whole)]) == 0
    images = _tree(whole / "sweep" / "images")
    # a shard whose image changed after it was recorded cannot replace a good one
    rec = _records(tmp_path / "shard1" / "sweep")[0]
    (tmp_path / "shard1" / "sweep" / "images" / rec["path"]).write_bytes(b"changed")
    assert main(["merge", str(tmp_path / "shard1"), "--out", str(whole)]) == 0
    assert {r["key"] for r in _records(whole / "sweep") if r["status"] == "ok"} == \
        {r["key"] for r in _records(tmp_path / "whole" / "sweep")} and \
        len(_records(whole / "sweep")) == 11
    assert _tree(whole / "sweep" / "images") == images
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(whole)]) == 0
    assert "11 done, 0 failed, 0 pending" in capsys.readouterr().out
    assert main(["run", str(manifest), "--out", str(whole), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 0


def test_merge_copies_only_from_inside_a_shards_images(tmp_path, capsys):
    manifest = _shards(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not an image of this plan")
    shard1 = tmp_path / "shard1" / "sweep"
    theirs = _records(tmp_path / "shard2" / "sweep")[0]  # a job shard 1 did not make
    forged = {**theirs, "path": "../../../secret.txt",
              "sha256": hashlib.sha256(secret.read_bytes()).hexdigest(),
              "bytes": secret.stat().st_size}
    with open(shard1 / "results.jsonl", "a") as fh:
        fh.write(json.dumps(forged) + "\n")
    assert main(["merge", str(tmp_path / "shard1"), "--out", str(tmp_path / "m"),
                 "--manifest", str(manifest), "--no-post"]) == 1
    merged = tmp_path / "m" / "sweep"
    assert theirs["key"] not in {r["key"] for r in _records(merged)}
    assert all(p.read_bytes() != secret.read_bytes()
               for p in (merged / "images").rglob("*") if p.is_file())


def test_merge_into_a_folder_a_run_is_writing_is_refused(tmp_path, capsys):
    from imagebatch.storage.store import Store

    _shards(tmp_path)
    running = Store(tmp_path / "merged", "sweep", "local")
    running.prepare()  # a run holding outputs/sweep, as `imagebatch run` does
    try:
        capsys.readouterr()
        assert main(["merge", *(str(tmp_path / f"shard{k}") for k in (1, 2, 3)),
                     "--out", str(tmp_path / "merged")]) == 2
        err = capsys.readouterr().err
        assert "another imagebatch run is writing to" in err and "Traceback" not in err
        assert (tmp_path / "merged" / "sweep" / "results.jsonl").read_bytes() == b""
        assert not (tmp_path / "merged" / "sweep" / "images").exists() or \
            not any((tmp_path / "merged" / "sweep" / "images").rglob("*.png"))
    finally:
        running.close()
    assert main(["merge", *(str(tmp_path / f"shard{k}") for k in (1, 2, 3)),
                 "--out", str(tmp_path / "merged")]) == 0


# ---- exports as part of the build ------------------------------------------------------------

EXPORTING = SMALL + """\
exports:
  - path: "{{id}}/{{vars}}-{{seed}}-{{width}}.{{format}}"
    width: [64, 32]
    format: [webp, jpeg]
"""


def _pick(manifest: Path, changes: dict) -> None:
    from imagebatch.planning.manifest import load_plan
    from imagebatch.storage.picks import picks_path, update_picks

    update_picks(picks_path(manifest), load_plan(str(manifest)), changes)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_assets_exports_what_is_out_of_date(tmp_path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    for name in ("alpha", "beta"):
        (mdir / f"{name}.yaml").write_text(EXPORTING.format(name=name))
    _pick(mdir / "alpha.yaml", {"alpha/warm/1.png": ("pick", None)})
    first = _make(tmp_path, "assets", f"ASSETS={tmp_path / 'assets'}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("imagebatch export") == 2
    alpha = json.loads((tmp_path / "assets" / "alpha" / "assets.json").read_text())
    assert len(alpha["files"]) == 4
    assert json.loads((tmp_path / "assets" / "beta" / "assets.json").read_text())["files"] == []

    second = _make(tmp_path, "assets", f"ASSETS={tmp_path / 'assets'}")
    assert second.returncode == 0 and "imagebatch" not in second.stdout, second.stdout

    time.sleep(0.01)
    _pick(mdir / "beta.yaml", {"beta/cool/2.png": ("pick", 4)})  # a new picks file
    third = _make(tmp_path, "assets", f"ASSETS={tmp_path / 'assets'}")
    assert third.returncode == 0, third.stdout + third.stderr
    assert third.stdout.count("imagebatch export") == 1 and "beta.yaml" in third.stdout
    assert "imagebatch run" not in third.stdout  # the images were up to date
    beta = json.loads((tmp_path / "assets" / "beta" / "assets.json").read_text())
    assert {f["source"]["path"] for f in beta["files"]} == {"beta/cool/2.png"}

    # a decision on an image whose prompt changed since (stale) fails the export: the
    # previous assets.json stays, and the next make tries again
    picks = mdir / "beta.picks.json"
    doc = json.loads(picks.read_text())
    doc["picks"]["beta/warm/1.png"] = {"key": "0" * 64, "rating": None, "status": "pick"}
    picks.write_text(json.dumps(doc))
    fourth = _make(tmp_path, "assets", f"ASSETS={tmp_path / 'assets'}")
    assert fourth.returncode != 0 and "NOT EXPORTED beta/warm/1.png" in fourth.stderr
    kept = json.loads((tmp_path / "assets" / "beta" / "assets.json").read_text())
    assert kept == beta
    fifth = _make(tmp_path, "assets", f"ASSETS={tmp_path / 'assets'}")
    assert fifth.returncode != 0 and "imagebatch export" in fifth.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None
                    or not (ROOT / ".git").exists(), reason="needs make, git and a checkout")
def test_make_run_then_make_export_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True,
                   capture_output=True, timeout=120)
    os.utime(clone / "pyproject.toml", (0, 0))  # the venv given is up to date: no install
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFUSION_", "MAKE"))}

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", "-C", str(clone), *args,
                               f"VENV={BIN.parent}", f"IMAGEBATCH={forked_imagebatch()}"],
                              capture_output=True, text=True,
                              env=env, timeout=300, check=False)

    run = make("run")
    assert run.returncode == 0, run.stdout + run.stderr
    exported = make("export")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    doc = json.loads((clone / "assets" / "example" / "assets.json").read_text())
    by_export: dict[str, set[str]] = {}
    for f in doc["files"]:
        by_export.setdefault(f["export"], set()).add(f["source"]["path"])
        with Image.open(clone / "assets" / "example" / f["file"]) as img:
            img.load()
            assert img.size == (f["width"], f["height"])
    picked = {"mushrooms/123.png", "fox/watercolor/2.png", "city/cyberpunk-dusk/7.png"}
    assert by_export == {"web": picked, "og-card": picked,
                         "thumbs": {"mushrooms/123.png", "fox/watercolor/2.png"}}


def test_workflow_exports_and_uploads_the_assets():
    text = WORKFLOW.read_text()
    assert "imagebatch export" in text and "--assets assets" in text
    assert "name: imagebatch-assets" in text and "path: assets" in text
    export_step = text.split("name: Export picked images")[1].split("- uses:")[0]
    assert "DIFFUSION_KEY" not in export_step  # no request is sent: the key stays out

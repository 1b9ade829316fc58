"""The commands `validate`, `plan` and `schema` through the real command line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tool_helpers import check_jsonschema

from imagebatch import cli

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "manifests"
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))
SCHEMA_FILE = ROOT / "imagebatch.schema.json"
BIN = Path(sys.executable).parent


def expectations(path: Path) -> list[tuple[int, int, str]]:
    """`# expect: LINE:COL [FIELD]` header lines of a corpus file; an empty file expects 1:1."""
    found = re.findall(rb"^# expect: (\d+):(\d+) ?(\S*)$", path.read_bytes(), re.MULTILINE)
    if not found:
        assert path.stat().st_size == 0, f"{path.name} has no expect line"
        return [(1, 1, "")]
    return [(int(line), int(col), field.decode()) for line, col, field in found]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its content: to show a command wrote nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def sha(request: dict) -> str:
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------
# corpus of malformed manifests: exit 2, file and line named, no traceback, nothing written


CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))


def test_the_corpus_is_there() -> None:
    assert len(CORPUS_FILES) >= 25


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["plan", "--json"],
                                     ["run", "--no-post"]])
@pytest.mark.parametrize("source", CORPUS_FILES, ids=lambda p: p.stem)
def test_malformed_manifest_exits_2_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        source: Path, command: list[str]) -> None:
    shutil.copy(source, tmp_path / source.name)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code = cli.main([command[0], source.name, *command[1:]])
    out, err = capsys.readouterr()
    assert code == 2, err
    for line, col, field in expectations(source):
        prefix = f"{source.name}:{line}:{col}: " + (f"{field}: " if field else "")
        assert prefix in err, f"expected {prefix!r} in:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out
    assert err.rstrip().endswith("nothing was sent")
    assert out == ""
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "outputs").exists()


LONG_CASES = {
    "long-prompt.yaml": ("version: 1\njobs:\n  - id: a\n    prompt: " + "x" * 10_001 + "\n",
                         "long-prompt.yaml:4:13: jobs[0].prompt: is 10,001 characters"),
    "long-after-filling.yaml": (
        "version: 1\njobs:\n  - id: a\n    prompt: \"" + "x" * 9_990 + "{v}\"\n"
        "    matrix:\n      v: [ok, \"" + "y" * 20 + "\"]\n",
        ("long-after-filling.yaml:4:13: jobs[0].prompt: is 10,010 characters once variables "
        "are filled in")),
    "long-negative.yaml": (
        "version: 1\ndefaults:\n  negative_prompt: " + "n" * 10_001 + "\njobs:\n  - {id: a, "
        "prompt: x}\n", "long-negative.yaml:3:20: defaults.negative_prompt: is 10,001"),
}


@pytest.mark.parametrize("name", sorted(LONG_CASES))
def test_prompts_over_the_limit_via_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], name: str) -> None:
    text, expected = LONG_CASES[name]
    (tmp_path / name).write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", name]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert not (tmp_path / "outputs").exists()


def test_a_folder_and_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder.yaml").mkdir()
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert cli.main(["validate", "folder.yaml"]) == 2
    assert "folder.yaml is a folder, not a manifest file" in capsys.readouterr().err
    assert cli.main(["run", "missing.yaml"]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml: no such manifest file" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_validate_reports_every_file_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(CORPUS / "seed-zero.yaml"), str(EXAMPLES[0]), str(CORPUS / "unknown-key.yaml")]
    assert cli.main(["validate", *files]) == 2
    err = capsys.readouterr().err
    assert f"{files[0]}:3:9: seeds[0]:" in err
    assert f"{files[2]}:6:5: jobs[0].promt:" in err
    assert "1 problem in " in err and "2 problems in " in err


def test_a_missing_file_does_not_hide_the_others_problems(
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(CORPUS / "unknown-key.yaml")
    assert cli.main(["validate", "no-such.yaml", bad, str(EXAMPLES[0])]) == 2
    err = capsys.readouterr().err
    assert "no-such.yaml: no such manifest file" in err
    assert f"{bad}:6:5: jobs[0].promt:" in err
    assert err.rstrip().endswith(f"2 problems in {bad}; 1 file not read; nothing was sent")
    assert "Traceback" not in err


def test_cap_is_changed_with_max_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("version: 1\njobs:\n  - {id: a, prompt: x, seeds: {start: 1, count: 20}}\n")
    assert cli.main(["validate", str(path), "--max-jobs", "19"]) == 2
    assert "20 jobs, over the cap of 19" in capsys.readouterr().err
    assert cli.main(["validate", str(path), "--max-jobs", "20"]) == 0
    assert "ok, 20 jobs" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["seed-zero.yaml", "bomb.yaml", "latin1.yaml"])
def test_malformed_via_subprocess(tmp_path: Path, name: str) -> None:
    shutil.copy(CORPUS / name, tmp_path / name)
    exe = BIN / "imagebatch"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "imagebatch"]
    res = subprocess.run([*argv, "run", name], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    line, col, _ = expectations(CORPUS / name)[0]
    assert f"{name}:{line}:{col}: " in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --------------------------------------------------------------------------------------
# validate and plan on good manifests


def test_validate_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(EXAMPLES) == 3
    assert cli.main(["validate", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    counts = {Path(line.split(":")[0]).name: line for line in out}
    assert "ok, 18 jobs (matrix" in counts["matrix.yaml"]
    assert "ok, 16 jobs (seed-sweep" in counts["seed-sweep.yaml"]


PLAN_JSON = [sys.executable, "-m", "imagebatch", "plan", "manifests/matrix.yaml", "--json"]


def test_plan_json_is_byte_identical_across_processes() -> None:
    outputs = []
    for hashseed in ("0", "1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "LC_ALL": "C", "PYTHONIOENCODING": ""}
        env.pop("DIFFUSION_MODEL_ID", None)
        res = subprocess.run(PLAN_JSON, cwd=ROOT, env=env, capture_output=True, check=True)
        outputs.append(res.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    rows = json.loads(outputs[0].decode("utf-8"))
    assert len(rows) == 18
    for row in rows:
        assert list(row) == ["key", "path", "request", "vars"]
        assert row["key"] == sha(row["request"])
        assert not row["path"].startswith("/") and ".." not in row["path"].split("/")
        assert row["request"]["model"] == "stable-image-ultra"
    assert rows[0]["path"] == "styles/1x1/pixel-art-dragon.png"
    assert rows[0]["vars"] == {"style": "pixel art", "subject": "dragon", "aspect_ratio": "1:1"}
    assert rows[0]["request"] == {
        "aspect_ratio": "1:1", "model": "stable-image-ultra", "seed": 42,
        "prompt": "A dragon in the style of pixel art, centered, plain background"}


def test_plan_json_has_only_json_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(ROOT / "manifests/example.yaml"), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert len(rows) == 1 + 2 * 2 + 2 * 2 + 2 + 2  # ..., two drawn creatures, two posters
    assert [r["path"] for r in rows[:3]] == ["mushrooms/123.png", "fox/watercolor/1.png",
                                             "fox/watercolor/2.png"]
    assert all(r["key"] == sha(r["request"]) for r in rows)
    assert err == ""


def test_plan_json_writes_non_ascii_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cafe.yaml"
    path.write_text('version: 1\njobs:\n  - {id: a, prompt: "Café ☕", seeds: 1}\n',
                    encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    res = subprocess.run([sys.executable, "-m", "imagebatch", "plan", str(path), "--json"],
                         cwd=ROOT, env=env, capture_output=True, check=True)
    assert '"prompt":"Café ☕"'.encode() in res.stdout
    (row,) = json.loads(res.stdout.decode("utf-8"))
    assert row["key"] == sha(row["request"])


def test_plan_table_lists_jobs_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(ROOT / "manifests/seed-sweep.yaml")]) == 0
    out = capsys.readouterr().out
    lines = out.rstrip().splitlines()
    assert lines[-3] == "16 jobs (seed-sweep, model stable-image-ultra)"
    # then what a run would act on, and its cost: unknown without a price
    assert lines[-2].startswith("a run would act on 16 jobs: ")
    assert lines[-1] == "estimated cost: unknown (no price set: --price or IMAGEBATCH_PRICE)"
    assert "lighthouse/1000.png" in out and "lighthouse/1015.png" in out


def test_plan_shards_partition_via_cli(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = str(ROOT / "manifests/matrix.yaml")
    assert cli.main(["plan", manifest, "--json"]) == 0
    whole = [r["key"] for r in json.loads(capsys.readouterr().out)]
    parts: list[str] = []
    for k in (1, 2, 3):
        assert cli.main(["plan", manifest, "--json", "--shard", f"{k}/3"]) == 0
        parts.extend(r["key"] for r in json.loads(capsys.readouterr().out))
    assert sorted(parts) == sorted(whole) and len(set(parts)) == len(parts)
    assert cli.main(["plan", manifest, "--shard", "2/3"]) == 0
    assert re.search(r"^\d+ of 18 jobs in shard 2/3", capsys.readouterr().out, re.MULTILINE)


@pytest.mark.parametrize("shard", ["0/3", "4/3", "x", "1/0"])
def test_bad_shard_is_a_usage_error(capsys: pytest.CaptureFixture[str], shard: str) -> None:
    assert cli.main(["plan", str(ROOT / "manifests/matrix.yaml"), "--shard", shard]) == 2
    assert "--shard" in capsys.readouterr().err


def test_model_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIFFUSION_MODEL_ID", "my-model")
    assert cli.main(["plan", str(ROOT / "manifests/matrix.yaml"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["request"]["model"] for r in rows} == {"my-model"}
    assert all(r["key"] == sha(r["request"]) for r in rows)


# --------------------------------------------------------------------------------------
# schema


def test_schema_is_valid_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    out = capsys.readouterr().out
    schema = json.loads(out)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    (tmp_path / "schema.json").write_text(out, encoding="utf-8")
    code, said = check_jsonschema("--check-metaschema", str(tmp_path / "schema.json"))
    assert code == 0, said


def test_committed_schema_equals_the_command_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text(encoding="utf-8")


def test_examples_validate_against_the_schema() -> None:
    code, said = check_jsonschema("--schemafile", str(SCHEMA_FILE), *map(str, EXAMPLES))
    assert code == 0, said


def test_schema_refuses_what_the_loader_refuses() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    good = {"version": 1, "jobs": [{"id": "a", "prompt": "x", "seeds": {"random": 2}}]}
    assert validator.is_valid(good)
    for bad in (
        {"version": 1, "jobs": [{"id": "a", "prompt": "x", "seeds": 0}]},
        {"version": 1, "jobs": [{"id": "a", "promt": "x"}]},
        {"version": 1, "jobs": [{"id": "a", "prompt": "x", "output_format": "gif"}]},
        {"version": 1, "jobs": [{"id": "a", "prompt": "x", "matrix": {"seed": [1]}}]},
        {"version": 2, "jobs": [{"id": "a", "prompt": "x"}]},
        {"version": 1, "name": "../x", "jobs": [{"id": "a", "prompt": "x"}]},
    ):
        assert not validator.is_valid(bad), bad


def test_a_shortened_prompt_keeps_its_matrix_values_in_sight():
    from imagebatch.commands.preview import fit_prompt

    prompt = "A city skyline at dawn, cyberpunk style"
    # at 80 columns the prompt has 15 characters: both values of the variant still show
    shown = fit_prompt(prompt, ["cyberpunk", "dawn"], 15)
    assert len(shown) <= 15 and "dawn" in shown and shown.startswith("A c"), shown
    assert fit_prompt(prompt, ["cyberpunk", "dawn"], 35) == "A city skylin…dawn, cyberpunk style"
    assert fit_prompt(prompt, ["x"], 100) == prompt  # fits: unchanged
    # no values: the end is cut, as before
    assert fit_prompt("A surreal landscape with glowing mushrooms", [], 15) == "A surreal land…"
    fox = "A red fox in a snowy birch forest, golden hour, watercolor"
    assert fit_prompt(fox, ["watercolor"], 15).endswith("watercolor")

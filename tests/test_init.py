"""`imagebatch init`, the front door of the command line, and the wheel that carries it all."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import imagebatch
from imagebatch import cli
from imagebatch.cli import main
from imagebatch.commands import scaffold

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA_FILE = ROOT / "imagebatch.schema.json"
WRITTEN = [scaffold.MANIFEST, scaffold.SCHEMA, scaffold.MAKEFILE, scaffold.WORKFLOW,
           scaffold.DIFF_WORKFLOW, scaffold.GITIGNORE]


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under root, outside .git and outputs."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in (".git", "outputs")}


def _init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["init", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _lines(out: str) -> dict[str, str]:
    """path -> verb, from init's report lines ("  wrote      Makefile (...)")."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"^  (wrote|unchanged|differs|replaced|added to) +(\S+)", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed")
    return str(path)


def _check_workflow(path: Path) -> None:
    """Valid under GitHub's workflow schema, no zizmor finding of medium or higher."""
    proc = subprocess.run([_tool("check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([_tool("zizmor"), "--offline", "--min-severity", "medium",
                           "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


# --- a fresh repository -------------------------------------------------------------------


def test_init_writes_everything_into_an_empty_folder(tmp_path, capsys):
    code, out, err = _init(capsys, str(tmp_path))
    assert code == 0, err
    assert _lines(out) == {path: "wrote" for path in WRITTEN}
    assert f"installs imagebatch=={imagebatch.version()}" in out
    assert "make assets" in out and err == ""

    manifest = (tmp_path / scaffold.MANIFEST).read_text()
    assert manifest.splitlines()[0] == "# yaml-language-server: $schema=../imagebatch.schema.json"
    # the schema the hint points at is the one `imagebatch schema` prints
    assert (tmp_path / scaffold.SCHEMA).read_text() == SCHEMA_FILE.read_text()
    makefile = (tmp_path / "Makefile").read_text()
    for target in ("assets", "plan", "status", "sheet", "review", "export", "help"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    assert "IMAGEBATCH ?= imagebatch" in makefile and ".venv" not in makefile
    workflow = yaml.safe_load((tmp_path / scaffold.WORKFLOW).read_text())
    assert workflow["env"]["IMAGEBATCH_REQUIREMENT"] == f"imagebatch=={imagebatch.version()}"
    assert "pip install ." not in (tmp_path / scaffold.WORKFLOW).read_text()
    assert (tmp_path / ".gitignore").read_text().splitlines()[-1] == "outputs/"


def test_the_written_manifest_validates(tmp_path, capsys):
    assert _init(capsys, str(tmp_path))[0] == 0
    manifest = str(tmp_path / scaffold.MANIFEST)
    assert main(["validate", manifest]) == 0
    assert "ok, 9 jobs (example," in capsys.readouterr().out
    # the exports section is written exactly when this version has the export command
    text = (tmp_path / scaffold.MANIFEST).read_text()
    assert ("\nexports:" in text) == ("export" in cli.COMMANDS)


def test_the_written_manifest_matches_the_schema_it_points_at(tmp_path, capsys):
    assert _init(capsys, str(tmp_path))[0] == 0
    proc = subprocess.run([_tool("check-jsonschema"), "--schemafile",
                           str(tmp_path / scaffold.SCHEMA), str(tmp_path / scaffold.MANIFEST)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_second_run_changes_nothing_and_says_so(tmp_path, capsys):
    assert _init(capsys, str(tmp_path))[0] == 0
    before = _files(tmp_path)
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0
    assert _lines(out) == {path: "unchanged" for path in WRITTEN}
    assert "Everything is in place; nothing was written." in out
    assert _files(tmp_path) == before  # same bytes, not even rewritten (same mtimes)


def test_init_creates_a_missing_folder(tmp_path, capsys):
    code, out, _ = _init(capsys, str(tmp_path / "new" / "repo"))
    assert code == 0 and "(new folder)" in out
    assert "cd " in out and (tmp_path / "new" / "repo" / "Makefile").is_file()


def test_init_defaults_to_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / scaffold.WORKFLOW).is_file()
    assert "Next: make assets" in capsys.readouterr().out


# --- a repository that has files already --------------------------------------------------


def test_an_existing_makefile_is_left_alone_and_imagebatch_mk_written(tmp_path, capsys):
    own = "all:\n\techo mine\n"
    (tmp_path / "Makefile").write_text(own)
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0
    assert (tmp_path / "Makefile").read_text() == own
    assert _lines(out)["imagebatch.mk"] == "wrote" and "Makefile" not in _lines(out)
    assert "    include imagebatch.mk" in out.splitlines()
    assert (tmp_path / "imagebatch.mk").read_text() == scaffold.include_text()

    # once the line is in, init stops asking for it
    (tmp_path / "Makefile").write_text(own + "include imagebatch.mk\n")
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and "include imagebatch.mk" not in out
    assert "Everything is in place" in out

    if shutil.which("make"):  # the included targets work from the user's own Makefile
        proc = subprocess.run(["make", "-n", "-C", str(tmp_path), "assets", "plan"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "imagebatch run manifests/example.yaml --out outputs" in proc.stdout
        assert "imagebatch plan manifests/example.yaml" in proc.stdout
        default = subprocess.run(["make", "-n", "-C", str(tmp_path)], capture_output=True,
                                 text=True, timeout=60, check=False)
        assert "echo mine" in default.stdout  # the user's default target stays the default


def test_a_lowercase_makefile_counts_as_the_repositorys_own(tmp_path, capsys):
    (tmp_path / "makefile").write_text("all:\n\ttrue\n")
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)["imagebatch.mk"] == "wrote"
    assert sorted(p.name for p in tmp_path.iterdir() if "akefile" in p.name) == ["makefile"]
    assert "Your makefile is left as it is" in out


def test_a_file_that_differs_is_listed_kept_and_diffable(tmp_path, capsys):
    assert _init(capsys, str(tmp_path))[0] == 0
    workflow = tmp_path / scaffold.WORKFLOW
    edited = workflow.read_text().replace('cron: "17 3 * * *"', 'cron: "0 5 * * 1"')
    workflow.write_text(edited)

    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0
    assert _lines(out)[scaffold.WORKFLOW] == "differs"
    assert f"imagebatch init {tmp_path} --diff" in out and "--force" in out
    assert workflow.read_text() == edited  # left as it is

    code, out, _ = _init(capsys, str(tmp_path), "--diff")
    assert code == 1  # like diff(1): there are differences
    assert f"--- {scaffold.WORKFLOW} (yours)" in out
    assert '-    - cron: "0 5 * * 1"' in out and '+    - cron: "17 3 * * *"' in out
    assert "Makefile" not in out  # files that are the same are not shown
    assert workflow.read_text() == edited

    code, out, _ = _init(capsys, "--print", scaffold.WORKFLOW)
    assert code == 0 and out == scaffold.workflow_text(f"imagebatch=={imagebatch.version()}")

    code, out, _ = _init(capsys, str(tmp_path), "--force")
    assert code == 0 and _lines(out)[scaffold.WORKFLOW] == "replaced"
    assert _lines(out)[scaffold.MANIFEST] == "unchanged"
    assert workflow.read_text() == scaffold.workflow_text(f"imagebatch=={imagebatch.version()}")
    same = (f"{tmp_path.resolve()}: every file is as imagebatch init {imagebatch.version()} "
            "writes it\n")
    assert _init(capsys, str(tmp_path), "--diff")[:2] == (0, same)


def test_force_never_rewrites_a_makefile_init_did_not_write(tmp_path, capsys):
    own = "build:\n\tcc main.c\n"
    (tmp_path / "Makefile").write_text(own)
    (tmp_path / "imagebatch.mk").write_text("# edited\n")
    code, out, _ = _init(capsys, str(tmp_path), "--force")
    assert code == 0
    assert (tmp_path / "Makefile").read_text() == own
    assert _lines(out)["imagebatch.mk"] == "replaced"
    assert (tmp_path / "imagebatch.mk").read_text() == scaffold.include_text()


def test_an_edited_makefile_init_wrote_is_still_compared_not_included(tmp_path, capsys):
    assert _init(capsys, str(tmp_path))[0] == 0
    makefile = tmp_path / "Makefile"
    makefile.write_text(makefile.read_text() + "\nmine:\n\ttrue\n")
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)["Makefile"] == "differs"
    assert not (tmp_path / "imagebatch.mk").exists()


def test_print_of_every_file_is_what_init_writes(tmp_path, capsys):
    assert _init(capsys, str(tmp_path))[0] == 0
    for name in WRITTEN:
        code, out, _ = _init(capsys, "--print", name)
        assert code == 0 and out == (tmp_path / name).read_text(), name
    code, out, _ = _init(capsys, "--print", "./imagebatch.mk")
    assert code == 0 and out == scaffold.include_text()


# --- .gitignore ---------------------------------------------------------------------------


def test_gitignore_gains_outputs_once_and_keeps_its_lines(tmp_path, capsys):
    (tmp_path / ".gitignore").write_text("node_modules/\n*.log")  # no final newline
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)[".gitignore"] == "added to"
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules/", "*.log"] and lines[-1] == "outputs/"
    assert _init(capsys, str(tmp_path))[0] == 0
    assert (tmp_path / ".gitignore").read_text().count("outputs/") == 1


@pytest.mark.parametrize("rule", ["outputs", "/outputs/", "outputs/*"])
def test_gitignore_that_already_ignores_outputs_is_left_alone(tmp_path, capsys, rule):
    (tmp_path / ".gitignore").write_text(f"{rule}\n")
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)[".gitignore"] == "unchanged"
    assert (tmp_path / ".gitignore").read_text() == f"{rule}\n"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_ignores_outputs_but_not_picks_files(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and "Note: git ignores" not in out

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", "--no-index",
                               path], check=False).returncode == 0

    assert ignored("outputs/example/images/fox/watercolor/1.png")
    assert not ignored(scaffold.PICKS) and not ignored(scaffold.MANIFEST)
    assert not ignored(scaffold.WORKFLOW) and not ignored(scaffold.SCHEMA)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_rule_that_would_ignore_picks_files_is_pointed_out(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.json\n")
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0
    assert "Note: git ignores manifests/example.picks.json (.gitignore:1:*.json)" in out
    assert "!*.picks.json" in out


# --- mistakes -----------------------------------------------------------------------------


def test_a_folder_where_a_file_goes_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / scaffold.WORKFLOW).mkdir(parents=True)
    code, _, err = _init(capsys, str(tmp_path))
    assert code == 2 and "is a folder" in err and "Traceback" not in err
    assert not (tmp_path / "manifests").exists() and not (tmp_path / "Makefile").exists()


def test_a_file_where_a_folder_goes_is_refused(tmp_path, capsys):
    (tmp_path / ".github").write_text("")
    code, _, err = _init(capsys, str(tmp_path))
    assert code == 2 and ".github is a file" in err
    assert not (tmp_path / "Makefile").exists()


def test_a_file_as_the_repository_is_refused(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    code, _, err = _init(capsys, str(tmp_path / "x"))
    assert code == 2 and "is not a folder" in err


@pytest.mark.parametrize("args, message", [
    (["--requirement", ""], "--requirement: empty"),
    (["--requirement", "imagebatch\nrm -rf /"], "line break"),
    (["--print", "setup.py"], "is not a file init writes"),
    (["--force", "--diff"], "not allowed with argument"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    code, _, err = _init(capsys, str(tmp_path / "repo"), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


def test_a_repository_that_cannot_be_written_exits_2(tmp_path, capsys, monkeypatch):
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if str(tmp_path) in str(dst):
            raise OSError(28, os.strerror(28), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    code, _, err = _init(capsys, str(tmp_path))
    assert code == 2 and err.startswith("imagebatch: cannot write ") and "Traceback" not in err
    assert "No space left" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no half-written file left


# --- the workflow it writes ---------------------------------------------------------------


@pytest.mark.parametrize("requirement", [
    None,
    "imagebatch @ git+https://github.com/example-org/imagebatch@v0.1.0",
    "imagebatch @ https://pkgs.example.com/simple/imagebatch/imagebatch-0.1.0-py3-none-any.whl",
])
def test_the_workflow_is_valid_and_clean_under_zizmor(tmp_path, capsys, requirement):
    args = [str(tmp_path)] + (["--requirement", requirement] if requirement else [])
    code, out, _ = _init(capsys, *args)
    spec = requirement or f"imagebatch=={imagebatch.version()}"
    assert code == 0 and f"(installs {spec})" in out
    path = tmp_path / scaffold.WORKFLOW
    doc = yaml.safe_load(path.read_text())
    assert doc["env"]["IMAGEBATCH_REQUIREMENT"] == spec
    installs = [step["run"] for job in doc["jobs"].values() for step in job["steps"]
                if step.get("name") == "Install imagebatch"]
    assert installs == ['python -m pip install "$IMAGEBATCH_REQUIREMENT"'] * 2
    _check_workflow(path)
    # the pull-request workflow installs the same imagebatch, and is as clean
    diff_path = tmp_path / scaffold.DIFF_WORKFLOW
    diff_doc = yaml.safe_load(diff_path.read_text())
    assert diff_doc["env"]["IMAGEBATCH_REQUIREMENT"] == spec
    assert [step["run"] for job in diff_doc["jobs"].values() for step in job["steps"]
            if step.get("name") == "Install imagebatch"] == [
        'python -m pip install "$IMAGEBATCH_REQUIREMENT"']
    _check_workflow(diff_path)


def test_the_workflow_template_keeps_the_repositorys_pinned_actions():
    def uses(text: str) -> set[str]:
        return {line.split("uses:")[1].strip() for line in text.splitlines() if "uses:" in line}

    mine = uses(scaffold.workflow_text("imagebatch==0"))
    assert mine and mine == uses((ROOT / ".github" / "workflows" / "imagebatch.yml").read_text())
    assert all(len(u.split("@")[1].split()[0]) == 40 for u in mine)
    diff = uses(scaffold.diff_workflow_text("imagebatch==0"))
    assert diff and diff == uses((ROOT / ".github" / "workflows" / "imagebatch-diff.yml")
                                 .read_text())
    assert all(len(u.split("@")[1].split()[0]) == 40 for u in diff)


# --- the front door -----------------------------------------------------------------------


def test_imagebatch_alone_prints_what_it_is_and_its_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imagebatch ")
    assert "imagebatch generates images in bulk from YAML manifests" in out
    for command in cli.COMMANDS:
        assert re.search(rf"^    {command} ", out, re.MULTILINE), command
    examples = out.split("examples:\n")[1].split("\n\n")[0].splitlines()
    # the whole way: set up, plan, run, review, export
    assert [line.split()[1] for line in examples if line.startswith("  imagebatch ")] == \
        ["init", "plan", "run", "review", "export"]
    assert "Stability AI" in out and "Heroku" in out  # both providers, not Heroku alone


def test_help_is_the_same_as_no_command(capsys):
    assert main(["--help"]) == 0
    helped = capsys.readouterr().out
    assert main([]) == 0
    assert capsys.readouterr().out == helped
    assert "Thin command line" not in helped


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"imagebatch {version('imagebatch')}\n"
    assert imagebatch.version() == version("imagebatch") == imagebatch.__version__


def test_version_falls_back_to_the_source_tree(monkeypatch):
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert imagebatch.version() == imagebatch.__version__


def test_summary_records_the_version(tmp_path, capsys):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\njobs:\n  - {id: a, prompt: a small test, seeds: 1}\n")
    assert main(["run", str(manifest), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "m" / "summary.json").read_text())
    assert summary["version"] == imagebatch.version()


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_shows_defaults_and_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^examples?:\n  (\S+=\S+ )*imagebatch " + command, out, re.MULTILINE), out
    options = out.split("\noptions:\n", 1)[1].split("\nexample", 1)[0]
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        if action.option_strings and action.nargs != 0 and action.default not in (None, [], {}):
            flag = action.option_strings[-1]
            m = re.search(rf"^  (?:-\w, )?{re.escape(flag)}[ \n](.*?)(?=^  -|\Z)", options,
                          re.MULTILINE | re.DOTALL)
            assert m and "default" in m.group(1), f"{command} {flag}: no default shown"


def test_schema_is_built_from_code_not_read_from_a_file(capsys):
    opened: list[str] = []
    watching = [True]

    def hook(event: str, args: tuple) -> None:
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed: this one stops recording below
    control = Path(imagebatch.__file__).parent / "planning" / "schema.py"
    try:
        control.read_bytes()  # the hook sees opens: this one must be recorded
        assert main(["schema"]) == 0
    finally:
        watching[0] = False
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()
    assert str(control) in opened
    assert not [p for p in opened if p.endswith(".schema.json")], opened


def test_init_output_is_utf8_safe_with_an_odd_folder_name(tmp_path):
    out = io.StringIO()
    folder = tmp_path / "my assets \x1b[31m"
    assert scaffold.init_command(str(folder), out=out) == 0
    assert "\x1b" not in out.getvalue() and "\\x1b" in out.getvalue()


# --- the wheel, installed outside the repository ------------------------------------------


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int = 600,
         ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if ok:
        assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
@pytest.mark.wheel
@pytest.mark.skipif(not (shutil.which("git") and shutil.which("make")),
                    reason="needs git and make")
def test_the_wheel_works_in_a_fresh_venv_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DIFFUSION_", "INFERENCE_", "MAKE", "PYTHON", "GIT_"))
           and k not in ("VIRTUAL_ENV", "MFLAGS")}
    # a copy of the sources: the build writes nothing into the repository
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                             "-z"], capture_output=True, check=True).stdout.decode()
    src = tmp_path / "src"
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
          str(src)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("imagebatch-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
         tmp_path, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    # the installed package is the wheel's, named imagebatch (no top-level `pipeline`, a name
    # another project owns), and carries every file of pipeline/ in the sources
    where = _run([str(py), "-c", "import imagebatch; print(imagebatch.__file__)"], tmp_path, env)
    taken = subprocess.run([str(py), "-c", "import pipeline"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=False)
    assert taken.returncode != 0 and "No module named 'pipeline'" in taken.stderr
    assert _run([str(py), "-m", "imagebatch", "--version"], tmp_path, env).stdout.startswith(
        "imagebatch ")
    installed = Path(where.stdout.strip()).parent
    assert venv in installed.parents
    data = {p.relative_to(src / "pipeline") for p in (src / "pipeline").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data and all((installed / rel).is_file() for rel in data), data

    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo, env)
    assert _run(["imagebatch", "--version"], repo, env).stdout == \
        f"imagebatch {imagebatch.__version__}\n"
    first = _run(["imagebatch", "init"], repo, env)
    assert _lines(first.stdout) == {path: "wrote" for path in WRITTEN}
    written = _files(repo)

    # the schema comes from the installed code, equal to the one committed here
    assert _run(["imagebatch", "schema"], repo, env).stdout == SCHEMA_FILE.read_text()
    assert (repo / scaffold.SCHEMA).read_text() == SCHEMA_FILE.read_text()
    _run(["imagebatch", "validate", scaffold.MANIFEST], repo, env)

    made = _run(["make", "assets"], repo, env)
    assert "embedded local server" in made.stderr
    out = repo / "outputs" / "example"
    images = sorted((out / "images").rglob("*.png"))
    assert len(images) == 9
    for path in images:
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) >= 64
    with Image.open(out / "contact-sheet.png") as sheet:
        sheet.load()
        assert sheet.width > 256
    assert len(list((out / "thumbs").rglob("*.jpg"))) == 9
    assert 'src="thumbs/' in (out / "index.html").read_text()
    assert json.loads((out / "summary.json").read_text())["version"] == imagebatch.__version__
    assert "Nothing to be done" in _run(["make", "assets"], repo, env).stdout
    assert "9 done, 0 failed, 0 pending" in _run(["make", "status"], repo, env).stdout
    _run(["make", "sheet"], repo, env)
    assert "9 jobs" in _run(["make", "plan"], repo, env).stdout
    for command in ("review", "export"):
        if command in cli.COMMANDS:  # these templates and pages ship in the wheel too
            _run(["imagebatch", command, "--help"], repo, env)

    # `serve` from the wheel, driven by `run` as a remote backend
    server = subprocess.Popen(["imagebatch", "serve", "--port", "0", "--workers", "1"],
                              cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline() if server.stderr else ""
        assert line.startswith("serving on http://127.0.0.1:"), line
        remote = {**env, "DIFFUSION_URL": line.split()[-1], "DIFFUSION_KEY": "any-token"}
        ran = _run(["imagebatch", "run", scaffold.MANIFEST, "--out", "outputs/served", "--json"],
                   repo, remote)
        assert json.loads(ran.stdout)["succeeded"] == 9
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if server.stderr:
            server.stderr.close()

    again = _run(["imagebatch", "init"], repo, env)
    assert "Everything is in place; nothing was written." in again.stdout
    assert _files(repo) == written
    _check_workflow(repo / scaffold.WORKFLOW)
    _check_workflow(repo / scaffold.DIFF_WORKFLOW)

    # `imagebatch diff` in the user's own repository, from a subfolder, on main or master
    who = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
    _run(["git", "add", "-A"], repo, env)
    _run(["git", *who, "commit", "-q", "-m", "init"], repo, env)
    manifest = repo / scaffold.MANIFEST
    manifest.write_text(manifest.read_text().replace("seeds: [1, 2]", "seeds: [1, 2, 3]", 1))
    shown = _run(["imagebatch", "diff", "example.yaml", "--price", "0.05"], repo / "manifests",
                 env)
    assert "example.yaml (example): 9 -> " in shown.stdout and " added, 0 removed" in shown.stdout
    assert "a run would send" in shown.stdout and shown.stderr == ""

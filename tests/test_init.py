"""`imagebatch init`, the front door of the command line, and the wheel that carries it all."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image
from stress_helpers import forked_imagebatch
from tool_helpers import check_jsonschema, tool

import imagebatch
from imagebatch import cli
from imagebatch.cli import main
from imagebatch.commands import scaffold
from imagebatch.providers import connect

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "imagebatch.schema.json"
WRITTEN = [scaffold.MANIFEST, scaffold.SCHEMA, scaffold.MAKEFILE, scaffold.WORKFLOW,
           scaffold.DIFF_WORKFLOW, scaffold.GITIGNORE]

@pytest.fixture(autouse=True)
def _installed_from_an_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process imagebatch is this checkout's editable install, which no CI runner
    can reach; the tests here see an install from a package index instead, unless they set
    where it came from themselves (the wheel tests use the real record)."""
    monkeypatch.setattr(scaffold, "installed_origin",
                        lambda: scaffold.origin_of(None, imagebatch.version()), raising=False)


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under root, outside .git and what
    make assets writes (outputs, assets)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in (".git", "outputs", "assets")}


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


def _check_workflow(*paths: Path) -> None:
    """Each valid under GitHub's workflow schema, no zizmor finding of medium or higher (one
    run of each tool for them all: each start costs about half a CPU-second)."""
    code, said = check_jsonschema("--builtin-schema", "vendor.github-workflows",
                                  *map(str, paths))
    assert code == 0, said
    proc = subprocess.run([tool("zizmor"), "--offline", "--min-severity", "medium",
                           "--format", "json", *map(str, paths)],
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
    ignored = (tmp_path / ".gitignore").read_text().splitlines()
    assert ignored[-len(scaffold.ignore_rules()):] == list(scaffold.ignore_rules())


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
    code, said = check_jsonschema("--schemafile", str(tmp_path / scaffold.SCHEMA),
                                  str(tmp_path / scaffold.MANIFEST))
    assert code == 0, said


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


def test_gitignore_gains_its_rules_once_and_keeps_its_lines(tmp_path, capsys):
    (tmp_path / ".gitignore").write_text("node_modules/\n*.log")  # no final newline
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)[".gitignore"] == "added to"
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules/", "*.log"]
    assert lines[-len(scaffold.ignore_rules()):] == list(scaffold.ignore_rules())
    assert _init(capsys, str(tmp_path))[0] == 0
    assert (tmp_path / ".gitignore").read_text().splitlines().count("outputs/") == 1


@pytest.mark.parametrize("rule", ["outputs", "/outputs/", "outputs/*"])
def test_gitignore_that_already_ignores_outputs_gains_only_the_rest(tmp_path, capsys, rule):
    (tmp_path / ".gitignore").write_text(f"{rule}\n")
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)[".gitignore"] == "added to"
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == rule and "outputs/" not in lines
    assert lines[-4:] == list(scaffold.ignore_rules())[1:]
    assert _lines(_init(capsys, str(tmp_path))[1])[".gitignore"] == "unchanged"


def test_gitignore_that_already_ignores_everything_is_left_alone(tmp_path, capsys):
    mine = "/outputs/\n*.lock\n.imagebatch-export.json\n.tmp-*\n"
    (tmp_path / ".gitignore").write_text(mine)
    code, out, _ = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out)[".gitignore"] == "unchanged"
    assert (tmp_path / ".gitignore").read_text() == mine


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


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_ignores_imagebatchs_locks_and_temp_files_but_not_what_is_committed(tmp_path,
                                                                              capsys):
    from imagebatch.planning.exportplan import ASSETS_JSON, LOCK_FILE, STATE_FILE
    from imagebatch.planning.plan import TMP_PREFIX
    from imagebatch.storage.picks import lock_path

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert _init(capsys, str(tmp_path))[0] == 0

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "-q", "--no-index",
                               path], check=False).returncode == 0

    # the names the code writes: the picks file's lock, an export folder's lock and record,
    # and temp files beside a picks file and beside an exported file
    picks_lock = lock_path(Path(scaffold.PICKS)).as_posix()
    assert picks_lock == "manifests/.example.picks.json.lock"
    for path in (picks_lock, f"assets/example/{LOCK_FILE}", f"assets/example/{STATE_FILE}",
                 f"manifests/{TMP_PREFIX}example.picks.json.41.42",
                 f"assets/example/fox/watercolor/{TMP_PREFIX}1-512w.webp.41"):
        assert ignored(path), path
    for path in (scaffold.PICKS, scaffold.MANIFEST, f"assets/example/{ASSETS_JSON}",
                 "assets/example/fox/watercolor/1-512w.webp",
                 f"ci/imagebatch-{imagebatch.version()}-py3-none-any.whl"):
        assert not ignored(path), path


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


# --- where CI installs imagebatch from -----------------------------------------------------

V = imagebatch.version()
COMMIT = "4f2c" + "0" * 36
GIT = {"vcs": "git", "commit_id": COMMIT, "requested_revision": "v0.1.0"}
WHEEL_SHA = "ab" * 32


@pytest.mark.parametrize("record, requirement, reachable, source", [
    (None, f"imagebatch=={V}", True, "a package index"),
    ({"url": "https://git.example.com/tools/imagebatch.git", "vcs_info": GIT},
     f"imagebatch @ git+https://git.example.com/tools/imagebatch.git@{COMMIT}", True,
     "https://git.example.com/tools/imagebatch.git"),
    # a token or password in the URL never reaches a workflow (nor the note)
    ({"url": "https://x-token:s3cr3t@git.example.com/tools/imagebatch.git", "vcs_info": GIT},
     f"imagebatch @ git+https://git.example.com/tools/imagebatch.git@{COMMIT}", True,
     "https://git.example.com/tools/imagebatch.git"),
    ({"url": "https://ghp_s3cr3t@github.com/acme/imagebatch", "vcs_info": GIT},
     f"imagebatch @ git+https://github.com/acme/imagebatch@{COMMIT}", True,
     "https://github.com/acme/imagebatch"),
    ({"url": "ssh://git@git.example.com:2222/tools/imagebatch.git", "vcs_info": GIT,
      "subdirectory": "py"},
     f"imagebatch @ git+ssh://git@git.example.com:2222/tools/imagebatch.git@{COMMIT}"
     "#subdirectory=py", True, "ssh://git@git.example.com:2222/tools/imagebatch.git"),
    ({"url": f"https://pkgs.example.com/imagebatch-{V}-py3-none-any.whl",
      "archive_info": {"hashes": {"sha256": WHEEL_SHA}}},
     f"imagebatch @ https://pkgs.example.com/imagebatch-{V}-py3-none-any.whl"
     f"#sha256={WHEEL_SHA}", True, f"https://pkgs.example.com/imagebatch-{V}-py3-none-any.whl"),
    ({"url": "file:///home/me/imagebatch", "dir_info": {"editable": True}},
     f"imagebatch=={V}", False, "the folder /home/me/imagebatch (editable)"),
    ({"url": "file:///home/me/imagebatch", "dir_info": {}},
     f"imagebatch=={V}", False, "the folder /home/me/imagebatch"),
    ({"url": f"file:///home/me/dist/imagebatch-{V}-py3-none-any.whl", "archive_info": {}},
     f"imagebatch=={V}", False, f"the file /home/me/dist/imagebatch-{V}-py3-none-any.whl"),
    ({"url": "file:///srv/git/imagebatch", "vcs_info": GIT},
     f"imagebatch=={V}", False, "the repository /srv/git/imagebatch"),
    ({"url": f"https://bucket.example.com/imagebatch-{V}-py3-none-any.whl?X-Sig=s3cr3t",
      "archive_info": {}}, f"imagebatch=={V}", False,
     f"https://bucket.example.com/imagebatch-{V}-py3-none-any.whl (a URL with a query, not "
     "written anywhere)"),
    ("{not json", f"imagebatch=={V}", False, "an install record that cannot be read"),
])
def test_where_imagebatch_was_installed_from_is_what_ci_installs(record, requirement,
                                                                  reachable, source):
    text = record if isinstance(record, str) or record is None else json.dumps(record)
    origin = scaffold.origin_of(text, V)
    assert (origin.requirement, origin.reachable, origin.source) == (requirement, reachable,
                                                                     source)
    assert "s3cr3t" not in repr(origin)
    assert origin.wheel == (f"/home/me/dist/imagebatch-{V}-py3-none-any.whl"
                            if source.startswith("the file") else None)
    if reachable:
        assert scaffold.check_requirement(origin.requirement) == origin.requirement


def _installed_from(monkeypatch: pytest.MonkeyPatch, record: dict[str, object]) -> None:
    monkeypatch.setattr(scaffold, "installed_origin",
                        lambda: scaffold.origin_of(json.dumps(record), V))


def test_the_workflows_install_the_git_commit_init_was_installed_from(tmp_path, capsys,
                                                                       monkeypatch):
    _installed_from(monkeypatch, {"url": "https://git.example.com/tools/imagebatch.git",
                                  "vcs_info": GIT})
    code, out, err = _init(capsys, str(tmp_path))
    spec = f"imagebatch @ git+https://git.example.com/tools/imagebatch.git@{COMMIT}"
    assert code == 0 and f"(installs {spec})" in out and err == ""
    for name in (scaffold.WORKFLOW, scaffold.DIFF_WORKFLOW):
        doc = yaml.safe_load((tmp_path / name).read_text())
        assert doc["env"]["IMAGEBATCH_REQUIREMENT"] == spec
    _check_workflow(tmp_path / scaffold.WORKFLOW, tmp_path / scaffold.DIFF_WORKFLOW)
    code, out, err = _init(capsys, "--print", scaffold.WORKFLOW)
    assert code == 0 and out == scaffold.workflow_text(spec) and err == ""
    assert "Everything is in place" in _init(capsys, str(tmp_path))[1]


@pytest.mark.parametrize("record, vendor", [
    ({"url": "file:///home/me/imagebatch", "dir_info": {"editable": True}},
     f"dist/imagebatch-{V}-py3-none-any.whl"),
    ({"url": f"file:///home/me/dist/imagebatch-{V}-py3-none-any.whl", "archive_info": {}},
     f"/home/me/dist/imagebatch-{V}-py3-none-any.whl"),
])
def test_init_says_when_no_ci_runner_can_reach_the_imagebatch_it_runs(tmp_path, capsys,
                                                                       monkeypatch, record,
                                                                       vendor):
    _installed_from(monkeypatch, record)
    code, out, err = _init(capsys, str(tmp_path))
    assert code == 0 and _lines(out) == {path: "wrote" for path in WRITTEN}
    assert "note:" not in out  # the report is as ever; the note is on stderr, at the end
    said = " ".join(err.split())
    assert "which a CI runner cannot reach" in said and "/home/me/" in said
    assert f"the workflows install imagebatch=={V} from the package index" in said
    assert f"imagebatch init {tmp_path} --force --requirement 'imagebatch @ git+https://" in err
    assert f"imagebatch init {tmp_path} --force --vendor-wheel {vendor}\n" in err
    # an explicit requirement is the user's answer: no note
    code, _, err = _init(capsys, str(tmp_path / "other"), "--requirement",
                         f"imagebatch @ https://pkgs.example.com/imagebatch-{V}.tar.gz")
    assert code == 0 and err == ""


def _wheel(folder: Path, version: str = V, name: str | None = None) -> Path:
    """A file with a wheel's name and the metadata init checks (enough to be kept in ci/)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"imagebatch-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"imagebatch-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: imagebatch\nVersion: {version}\n")
        zf.writestr("pipeline/__init__.py", f'__version__ = "{version}"\n')
    return path


def test_vendor_wheel_keeps_the_wheel_and_the_workflows_install_it(tmp_path, capsys,
                                                                   monkeypatch):
    _installed_from(monkeypatch, {"url": "file:///home/me/imagebatch", "dir_info": {}})
    wheel = _wheel(tmp_path / "dist")
    repo = tmp_path / "repo"
    code, out, err = _init(capsys, str(repo), "--vendor-wheel", str(wheel))
    kept = f"ci/{wheel.name}"
    assert code == 0 and err == ""
    assert _lines(out) == {**{path: "wrote" for path in WRITTEN}, kept: "wrote"}
    assert (repo / kept).read_bytes() == wheel.read_bytes()
    for name in (scaffold.WORKFLOW, scaffold.DIFF_WORKFLOW):
        doc = yaml.safe_load((repo / name).read_text())
        assert doc["env"]["IMAGEBATCH_REQUIREMENT"] == f"./{kept}"

    # a later init, without the option, keeps installing the wheel kept there: no note
    code, out, err = _init(capsys, str(repo))
    assert code == 0 and err == "" and "Everything is in place" in out
    assert _init(capsys, str(repo), "--diff")[0] == 0

    # a wheel that differs is named, never printed
    wheel.write_bytes(wheel.read_bytes() + b"\xff\x00")
    code, out, _ = _init(capsys, str(repo), "--diff", "--vendor-wheel", str(wheel))
    assert code == 1 and out == f"{kept}: differs from the wheel given (binary; not shown)\n"
    code, out, _ = _init(capsys, str(repo), "--force", "--vendor-wheel", str(wheel))
    assert code == 0 and _lines(out)[kept] == "replaced"
    assert (repo / kept).read_bytes() == wheel.read_bytes()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_rule_that_would_ignore_the_kept_wheel_is_pointed_out(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.whl\n")
    code, out, _ = _init(capsys, str(tmp_path), "--vendor-wheel", str(_wheel(tmp_path / "d")))
    assert code == 0
    assert f"Note: git ignores ci/imagebatch-{V}-py3-none-any.whl (.gitignore:1:*.whl)" in out
    assert "!ci/*.whl" in out


@pytest.mark.parametrize("make, message", [
    (lambda d: _wheel(d, "0.0.1"), "is not named as a wheel of imagebatch"),
    (lambda d: _wheel(d, name=f"imagebatch-{V}.tar.gz"), "is not named as a wheel"),
    (lambda d: _wheel(d, "0.0.1", name=f"imagebatch-{V}-py3-none-any.whl"),
     "cannot read"),  # its metadata is another version's
    (lambda d: d / f"imagebatch-{V}-py3-none-any.whl", "cannot read"),  # missing
])
def test_a_wheel_that_is_not_this_version_is_refused(tmp_path, capsys, make, message):
    wheel = make(tmp_path / "dist")
    code, _, err = _init(capsys, str(tmp_path / "repo"), "--vendor-wheel", str(wheel))
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


def test_requirement_and_vendor_wheel_are_one_choice(tmp_path, capsys):
    code, _, err = _init(capsys, str(tmp_path), "--requirement", "imagebatch",
                         "--vendor-wheel", str(_wheel(tmp_path)))
    assert code == 2 and "not allowed with argument" in err


# --- make assets: the same targets here and in a repository init sets up -------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_this_repositorys_makefile_includes_the_targets_init_writes(tmp_path, capsys):
    fragment = "pipeline/templates/init/imagebatch.mk"
    ours = (ROOT / "Makefile").read_text()
    assert f"include {fragment}\n" in ours.splitlines(keepends=True)
    assert (ROOT / fragment).read_text() == scaffold.include_text()
    # no target of the fragment is defined a second time here
    for target in ("assets", "run", "plan", "status", "sheet", "review", "export"):
        assert not re.search(rf"^{target}:", ours, re.MULTILINE), target

    assert _init(capsys, str(tmp_path))[0] == 0
    where = {"MANIFEST_DIR": str(tmp_path / "manifests"), "OUT": str(tmp_path / "outputs"),
             "ASSETS": str(tmp_path / "assets")}
    here = subprocess.run(["make", "-n", "-C", str(ROOT), "assets",
                           *(f"{k}={v}" for k, v in where.items())],
                          capture_output=True, text=True, timeout=60, check=False)
    there = subprocess.run(["make", "-n", "-C", str(tmp_path), "assets"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    assert f".venv/bin/imagebatch export {where['MANIFEST_DIR']}/example.yaml --out " \
        f"{where['OUT']} --assets {where['ASSETS']}" in here.stdout
    assert "imagebatch run manifests/example.yaml --out outputs" in there.stdout
    assert "imagebatch export manifests/example.yaml --out outputs --assets assets" in \
        there.stdout


def _picked_files(root: Path) -> list[dict[str, object]]:
    """assets.json's files, each decoded: its size and format are what the entry says."""
    files = json.loads((root / "assets.json").read_text())["files"]
    for entry in files:
        with Image.open(root / entry["file"]) as im:
            im.load()
            assert im.size == (entry["width"], entry["height"]), entry
            assert im.format == {"jpeg": "JPEG", "webp": "WEBP"}[entry["format"]], entry
    return files


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("git") and shutil.which("make")),
                    reason="needs git and make")
def test_make_assets_runs_then_exports_the_picks_at_sizes_the_images_have(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert _init(capsys, str(tmp_path))[0] == 0
    # imagebatch's commands forked by this worker's Forker: what make decides to run is
    # checked here, the console script on the wheel
    imagebatch = forked_imagebatch()
    env = {**os.environ, "IMAGEBATCH": imagebatch}

    def make() -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["make", "assets", f"IMAGEBATCH={imagebatch}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    first = make()
    assert "imagebatch run manifests/example.yaml" in first.stdout
    assert "imagebatch export manifests/example.yaml" in first.stdout
    root = tmp_path / "assets" / "example"
    assert _picked_files(root) == []  # nothing picked yet: an empty, true assets.json

    # a pick makes the picks file newer than assets.json: the next make exports, only
    assert main(["pick", str(tmp_path / scaffold.MANIFEST), "fox/watercolor/1.png",
                 "mushrooms/123.png"]) == 0
    second = make()
    assert "imagebatch run" not in second.stdout and "imagebatch export" in second.stdout
    files = _picked_files(root)
    asked = yaml.safe_load((tmp_path / scaffold.MANIFEST).read_text())["exports"][0]["width"]
    # every width asked for is made, for the 1:1 fox (1024 px) and the 16:9 mushrooms (1344)
    for source in ("fox/watercolor/1.png", "mushrooms/123.png"):
        made = [f for f in files if f["source"]["path"] == source]  # type: ignore[index]
        assert sorted({f["width"] for f in made}) == sorted(asked), made
        assert all(f"-{f['width']}w." in str(f["file"]) for f in made)
    assert "Nothing to be done" in make().stdout


# --- the first run ----------------------------------------------------------------------------

SMALL = "version: 1\njobs:\n  - {id: a, prompt: a small test, seeds: [1, 2]}\n"


def test_a_first_run_on_the_embedded_server_says_what_to_open_next(tmp_path, capsys,
                                                                    monkeypatch):
    import imagebatch.running.run as running

    started: list[str] = []
    real = running.running_server

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.append("server")
        return real(*args, **kwargs)

    monkeypatch.setattr(running, "running_server", counted)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(SMALL)
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--out", str(out)]) == 0
    first = capsys.readouterr()
    assert started == ["server"] and "using the embedded local server" in first.err
    tail = first.out.splitlines()[-5:]
    assert tail[:3] == ["next:", f"  open {out}/m/index.html in a browser",
                        f"  imagebatch review {manifest}   to pick, reject and rate its images"]
    assert "placeholder pictures" in tail[3] and "DIFFUSION_URL" in tail[4]

    # nothing left to send: no server is started, and nothing is said about one
    assert main(["run", str(manifest), "--out", str(out)]) == 0
    second = capsys.readouterr()
    assert started == ["server"]
    assert "embedded local server" not in second.err + second.out and "next:" not in second.out
    assert json.loads((out / "m" / "summary.json").read_text())["skipped"] == 2


def test_a_run_on_a_hosted_service_has_no_placeholder_note(tmp_path):
    from imagebatch.planning.manifest import load_plan
    from imagebatch.running.options import RunOptions
    from imagebatch.running.run import run_plans
    from imagebatch.running.summary import text
    from imagebatch.service.server import ServerOptions, running_server

    manifest = tmp_path / "m.yaml"
    manifest.write_text(SMALL)

    async def hosted() -> tuple[str, int]:
        async with running_server(ServerOptions(flat=True)) as srv:
            conn = connect.Connection(prefix="DIFFUSION", url=srv.url, key="k-test")
            opts = RunOptions(manifests=(), out=tmp_path / "out", rpm=0, post=False)
            report = await run_plans([load_plan(str(manifest))], conn, opts, io.StringIO())
            return text(report), srv.stats.requests

    said, received = asyncio.run(hosted())
    assert received == 2  # as the server counted them: the run did send
    assert "next:" not in said and "placeholder" not in said


def test_a_key_without_its_url_is_pointed_out(tmp_path, capsys, monkeypatch):

    secret = "inf-k3y-that-must-not-show"
    conns, notes = connect.pool({"DIFFUSION_KEY": secret}, ["DIFFUSION"])
    assert conns[0].local and len(notes) == 1
    assert notes[0].startswith("DIFFUSION_KEY is set but DIFFUSION_URL is not, so the key is "
                               "unused")
    # --local asks for the embedded server; a URL uses the key: nothing to say
    assert connect.pool({"DIFFUSION_KEY": secret}, ["DIFFUSION"], local=True)[1] == []
    assert connect.pool({"DIFFUSION_KEY": secret, "DIFFUSION_URL": "https://x.example.com"},
                       ["DIFFUSION"])[1] == []

    manifest = tmp_path / "m.yaml"
    manifest.write_text(SMALL)
    monkeypatch.setenv("DIFFUSION_KEY", secret)
    assert main(["run", str(manifest), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "note: DIFFUSION_KEY is set but DIFFUSION_URL is not" in captured.err
    assert secret not in captured.err + captured.out


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
    # the pull-request workflow installs the same imagebatch, and is as clean
    diff_path = tmp_path / scaffold.DIFF_WORKFLOW
    diff_doc = yaml.safe_load(diff_path.read_text())
    assert diff_doc["env"]["IMAGEBATCH_REQUIREMENT"] == spec
    assert [step["run"] for job in diff_doc["jobs"].values() for step in job["steps"]
            if step.get("name") == "Install imagebatch"] == [
        'python -m pip install "$IMAGEBATCH_REQUIREMENT"']
    _check_workflow(path, diff_path)


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


def test_version_is_the_running_codes_without_a_metadata_lookup(monkeypatch, capsys):
    import importlib.metadata

    def looked_up(name: str) -> str:
        raise AssertionError(f"importlib.metadata.version({name!r}) was called")

    monkeypatch.setattr(importlib.metadata, "version", looked_up)
    # a source tree whose version moved on since it was installed (editable) says its own
    monkeypatch.setattr(imagebatch, "__version__", "0.0.0-source")
    assert imagebatch.version() == "0.0.0-source"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "imagebatch 0.0.0-source\n"


def test_the_command_exits_with_mains_status_and_leaves_its_objects_to_the_exit(monkeypatch):
    import gc
    from importlib.metadata import entry_points

    # the installed `imagebatch` and `python -m imagebatch` both end in cli.console()
    (script,) = entry_points(group="console_scripts", name="imagebatch")
    assert script.value == "imagebatch.cli:console"
    assert "console()" in (ROOT / "pipeline" / "__main__.py").read_text()
    monkeypatch.setattr(cli, "main", lambda: 3)
    before = gc.get_freeze_count()
    with pytest.raises(SystemExit) as exited:
        cli.console()
    assert exited.value.code == 3
    # what is alive at the end is frozen: the interpreter's exit skips walking it (left
    # frozen here, as this worker's collection already froze what it imported)
    assert gc.get_freeze_count() > before


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


def _commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_a_command_defined_alone_parses_as_in_the_whole_command_line(command):
    # `imagebatch COMMAND ...` defines COMMAND alone (the rest cost start-up time); what it
    # parses and shows must be what the whole command line has for it
    whole, alone = _commands_of(cli.build_parser()), _commands_of(cli.build_parser(command))
    assert list(alone) == [command] and command in whole

    def shape(p: argparse.ArgumentParser) -> list[tuple[object, ...]]:
        return [(a.option_strings, a.dest, a.nargs, a.default, a.type, a.choices, a.const,
                 a.required, a.help, a.metavar) for a in p._actions]

    assert shape(alone[command]) == shape(whole[command])
    assert alone[command].format_help() == whole[command].format_help()


@pytest.mark.parametrize("argv", [["-h", "run"], ["--help", "status", "x.yaml"]])
def test_help_before_a_command_still_lists_every_command(argv, capsys):
    # the top level's --help comes before the command: the whole command line, not the one
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imagebatch [-h] [--version] COMMAND")
    listed = re.findall(r"^    (\w+) ", out, re.MULTILINE)
    assert listed == list(_commands_of(cli.build_parser())), out


def test_a_mistyped_command_is_pointed_at_the_nearest_one(capsys):
    assert cli.main(["stauts", "m.yaml"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'stauts'" in err and "did you mean 'status'?" in err
    assert "'review'" in err  # the choices listed are every command's


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


def _process_env() -> dict[str, str]:
    """This process's environment without what would steer a build, make, git or a run."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DIFFUSION_", "INFERENCE_", "MAKE", "PYTHON", "GIT_"))
            and k not in ("VIRTUAL_ENV", "MFLAGS")}


def _copy_sources(dest: Path) -> Path:
    """A copy of the sources, as a clone has them: a build writes nothing into ROOT."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                             "-z"], capture_output=True, check=True).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def _venv(path: Path, env: dict[str, str]) -> Path:
    """A fresh virtual environment at `path` holding pip alone, made as `make` makes .venv
    (tools/make_venv.py: this interpreter's pip copied, compiled files included, rather than
    ensurepip's install and byte-compiling of it): its bin folder."""
    _run([sys.executable, str(ROOT / "tools" / "make_venv.py"), str(path)], path.parent, env)
    return path / "bin"


@dataclass(frozen=True)
class Installed:
    """The wheel `make wheel` built from a copy of the sources, installed in a fresh venv."""

    src: Path
    wheel: Path
    venv: Path
    env: dict[str, str]  # PATH starts at the venv's bin


@pytest.fixture(scope="session")
def installed(newcomer: Newcomer) -> Installed:
    """The wheel the getting-started guide has `make wheel` build in a clone, installed (as
    the guide says) in a fresh venv: one build and one install for every test of the wheel
    (each takes half a minute), made by running the guide's own commands."""
    wheel = newcomer.clone / "dist" / f"imagebatch-{imagebatch.__version__}-py3-none-any.whl"
    built = newcomer.said["make -C imagebatch wheel"]
    # the last line of `make wheel`'s own output names the wheel (make -C then says it left)
    said = [line for line in built.stdout.splitlines() if not line.startswith("make: ")]
    assert said[-1] == f"dist/{wheel.name}" and wheel.is_file()
    # The guide installs the clone's folder, then this wheel, which pip skips as the same
    # version: the wheel's own files replace the first install's (its dependencies stay).
    _run([str(newcomer.venv / "bin" / "python"), "-m", "pip", "install", "-q",
          "--disable-pip-version-check", "--force-reinstall", "--no-deps", str(wheel)],
         newcomer.tmp, newcomer.env)
    # landscapes: the renderer, its fonts and its forkserver, from the wheel's own files
    env = {k: v for k, v in newcomer.env.items() if k != "IMAGEBATCH_PLACEHOLDERS"}
    return Installed(newcomer.clone, wheel, newcomer.venv, env)


@pytest.mark.slow
@pytest.mark.wheel
def test_the_wheel_works_in_a_fresh_venv_outside_the_repository(tmp_path, installed):
    env, src, venv = dict(installed.env), installed.src, installed.venv
    py = venv / "bin" / "python"

    # the installed package is the wheel's, named imagebatch (no top-level `pipeline`, a name
    # another project owns), and carries every file of pipeline/ in the sources
    where = _run([str(py), "-c", "import imagebatch; print(imagebatch.__file__)"], tmp_path, env)
    taken = subprocess.run([str(py), "-c", "import pipeline"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=False)
    assert taken.returncode != 0 and "No module named 'pipeline'" in taken.stderr
    assert _run([str(py), "-m", "imagebatch", "--version"], tmp_path, env).stdout.startswith(
        "imagebatch ")
    installed_at = Path(where.stdout.strip()).parent
    assert venv in installed_at.parents
    data = {p.relative_to(src / "pipeline") for p in (src / "pipeline").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data and all((installed_at / rel).is_file() for rel in data), data

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
            assert im.getcolors(1) is None  # a landscape the wheel's renderer drew, not flat
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

    # `serve` from the wheel, driven by `run` as a remote backend (flat pictures: the
    # wheel's renderer drew the landscapes `make assets` checked above)
    server = subprocess.Popen(["imagebatch", "serve", "--port", "0", "--workers", "1", "--flat"],
                              cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline() if server.stderr else ""
        assert line.startswith("serving on http://127.0.0.1:"), line
        remote = {**env, "DIFFUSION_URL": line.split()[-1], "DIFFUSION_KEY": "any-token"}
        # --rpm 0: a server with no limit, not paced at a hosted service's 20 a minute
        ran = _run(["imagebatch", "run", scaffold.MANIFEST, "--out", "outputs/served", "--json",
                    "--rpm", "0"], repo, remote)
        assert json.loads(ran.stdout)["succeeded"] == 9
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if server.stderr:
            server.stderr.close()

    again = _run(["imagebatch", "init"], repo, env)
    assert "Everything is in place; nothing was written." in again.stdout
    assert _files(repo) == written
    _check_workflow(repo / scaffold.WORKFLOW, repo / scaffold.DIFF_WORKFLOW)

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


def _install_step(workflows: list[Path]) -> tuple[str, str]:
    """(the `run:` of the workflows' "Install imagebatch" steps, IMAGEBATCH_REQUIREMENT):
    one script and one requirement, the same in every job of both workflows."""
    runs, specs = set(), set()
    for path in workflows:
        doc = yaml.safe_load(path.read_text())
        specs.add(doc["env"]["IMAGEBATCH_REQUIREMENT"])
        runs |= {step["run"] for job in doc["jobs"].values() for step in job["steps"]
                 if step.get("name") == "Install imagebatch"}
    (run,), (spec,) = runs, specs
    return run, spec


@pytest.mark.slow
@pytest.mark.wheel
def test_a_newcomer_goes_from_the_wheel_to_committed_assets(tmp_path, installed):
    from imagebatch.planning.exportplan import LOCK_FILE, STATE_FILE
    from imagebatch.planning.plan import TMP_PREFIX

    env = {**installed.env, "IMAGEBATCH_PLACEHOLDERS": "flat"}  # what pictures show is not checked
    repo = tmp_path / "site"
    repo.mkdir()
    _run(["git", "init", "-q"], repo, env)

    # installed from a wheel file: init says no runner can reach it, and how to keep it
    first = _run(["imagebatch", "init"], repo, env)
    assert _lines(first.stdout) == {path: "wrote" for path in WRITTEN}
    assert "which a CI runner cannot reach" in " ".join(first.stderr.split())
    assert f"imagebatch init --force --vendor-wheel {installed.wheel}\n" in first.stderr
    kept = f"ci/{installed.wheel.name}"
    vendored = _run(["imagebatch", "init", "--force", "--vendor-wheel", str(installed.wheel)],
                    repo, env)
    assert vendored.stderr == "" and _lines(vendored.stdout)[kept] == "wrote"
    assert (repo / kept).read_bytes() == installed.wheel.read_bytes()

    # make assets: the images, then the exports (nothing picked yet)
    made = _run(["make", "assets"], repo, env)
    assert "imagebatch export manifests/example.yaml" in made.stdout
    said = made.stdout.splitlines()
    at = said.index("next:")  # the run's last lines, before the export's
    assert said[at + 1:at + 3] == [
        "  open outputs/example/index.html in a browser",
        "  imagebatch review manifests/example.yaml   to pick, reject and rate its images"]
    assert "placeholder pictures" in made.stdout
    assert json.loads((repo / "assets" / "example" / "assets.json").read_text())["files"] == []

    # a pick, then make assets exports it; the files are what assets.json says
    _run(["imagebatch", "pick", scaffold.MANIFEST, "fox/watercolor/1.png"], repo, env)
    again = _run(["make", "assets"], repo, env)
    assert "imagebatch run" not in again.stdout and "embedded local server" not in again.stderr
    files = _picked_files(repo / "assets" / "example")
    assert sorted((f["width"], f["format"]) for f in files) == [
        (512, "jpeg"), (512, "webp"), (1024, "jpeg"), (1024, "webp")]

    # what `git add -A` stages: the team's work, none of imagebatch's bookkeeping
    leftover = repo / "manifests" / f"{TMP_PREFIX}example.picks.json.4242.1"  # a killed write's
    leftover.write_text("{")
    bookkeeping = [repo / "manifests" / ".example.picks.json.lock",
                   repo / "assets" / "example" / LOCK_FILE,
                   repo / "assets" / "example" / STATE_FILE, leftover]
    assert all(path.is_file() for path in bookkeeping)
    _run(["git", "add", "-A"], repo, env)
    staged = set(_run(["git", "diff", "--cached", "--name-only", "-z"], repo, env)
                 .stdout.split("\0")) - {""}
    assert staged == {*WRITTEN, kept, scaffold.PICKS, "assets/example/assets.json",
                      *(f"assets/example/{f['file']}" for f in files)}, staged

    # the workflows' install step, as written, on a runner with a fresh Python: it installs
    # the wheel kept in the checkout
    script, spec = _install_step([repo / scaffold.WORKFLOW, repo / scaffold.DIFF_WORKFLOW])
    assert spec == f"./{kept}"
    runner = _venv(tmp_path / "runner", env)
    clean = {"PATH": f"{runner}{os.pathsep}/usr/bin:/bin", "HOME": env.get("HOME", str(tmp_path)),
             "IMAGEBATCH_REQUIREMENT": spec,
             **{k: v for k, v in env.items() if k.startswith("PIP_")}}  # the package index
    assert not (runner / "imagebatch").exists()
    _run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], repo, clean)
    assert _run([str(runner / "imagebatch"), "--version"], repo, clean).stdout == \
        f"imagebatch {imagebatch.__version__}\n"


# Lines of the docs' shell blocks this test does not run, and why: each must match a line.
NOT_RUN = {
    "git+https://HOST/": "the team's git server",
    "heroku ": "a Heroku app",
    "make test": "the whole test suite, this test included",
    "imagebatch review ": "serves a page until Ctrl-C",
}


def _commands(doc: Path) -> list[list[str]]:
    """Each fenced sh block's command lines, and each console block's `$ ` lines."""
    blocks = []
    for lang, body in re.findall(r"^```(sh|console)\n(.*?)^```", doc.read_text(),
                                 re.MULTILINE | re.DOTALL):
        lines = [line.strip() for line in body.splitlines()]
        if lang == "console":
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


@dataclass(frozen=True)
class Newcomer:
    """What running the getting-started guide's and the README's commands left."""

    tmp: Path  # the folder holding the clone (`imagebatch/`) and the user's own repository
    clone: Path
    site: Path
    venv: Path  # where `python -m pip install` put imagebatch
    env: dict[str, str]  # PATH starts at the venv's bin
    ran: list[str]  # the lines run, in order
    used: set[str]  # the NOT_RUN patterns that skipped a line
    said: dict[str, subprocess.CompletedProcess[str]]  # each line run -> what it did


def _requirements(section: str, key: str) -> list[str]:
    """The quoted requirements of `key = [...]` in pyproject.toml's [section]."""
    text = (ROOT / "pyproject.toml").read_text()
    body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
    listed = re.search(rf"^{key} = \[(.*?)\]$", body, re.MULTILINE | re.DOTALL)
    assert listed, (section, key)
    return [m for line in listed.group(1).splitlines()
            for m in re.findall(r'^\s*"([^"]+)"', line)]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The pip settings of a package mirror: every wheel the wheel tests install (imagebatch's
    dependencies, its build backend, pip itself), downloaded once from the package index into
    a folder that the tests' pip installs then read with no index. The commands run as
    written; each install takes seconds instead of a quarter of a minute of resolving
    against the whole index (which the download has just done, for the same ranges).

    And those installs do not byte-compile what they install (PIP_COMPILE=0): most of it is
    never imported here, and a build's isolated setuptools is thrown away after one build.
    Python compiles what a command imports, once, as it runs it: 2 CPU-seconds less in all."""
    where = tmp_path_factory.mktemp("wheelhouse")
    wanted = ["pip", *_requirements("build-system", "requires"),
              *_requirements("project", "dependencies")]
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
          "-d", str(where), *wanted], where, _process_env())
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(where), "PIP_COMPILE": "0"}


@pytest.fixture(scope="session")
def newcomer(tmp_path_factory: pytest.TempPathFactory, wheelhouse: dict[str, str]) -> Newcomer:
    """The docs' shell blocks run line by line as a newcomer would: a clone of imagebatch
    beside their own repository, a fresh venv, then every command (the wheel tests use the
    wheel and the venv they leave, rather than building and installing another)."""
    if not (shutil.which("git") and shutil.which("make")):
        pytest.skip("needs git and make")
    tmp = tmp_path_factory.mktemp("newcomer")
    # the embedded server draws flat pictures for the guide's runs, as for every other test's
    # (nothing here looks at them); the wheel's own test draws landscapes (`installed`)
    env = {**_process_env(), **wheelhouse, "IMAGEBATCH_PLACEHOLDERS": "flat"}
    clone = _copy_sources(tmp / "imagebatch")
    site = tmp / "my-site"
    site.mkdir()
    _run(["git", "init", "-q"], site, env)
    venv = tmp / "venv"
    env["PATH"] = f"{_venv(venv, env)}{os.pathsep}{env['PATH']}"

    used: set[str] = set()
    said: dict[str, subprocess.CompletedProcess[str]] = {}
    ran: list[str] = []
    guide = _commands(ROOT / "docs" / "getting-started.md")
    readme = _commands(ROOT / "README.md")
    # the guide first: it installs imagebatch, which the README's first lines assume
    for block in [*guide, *readme]:
        text = "\n".join(block)
        where = (tmp if "./imagebatch" in text or "-C imagebatch" in text else
                 clone if re.search(r"^make (run|test)\b", text, re.MULTILINE) else site)
        for line in block:
            skip = [pattern for pattern in NOT_RUN if pattern in line]
            if skip:
                used.update(skip)
                continue
            proc = _run(["bash", "-eo", "pipefail", "-c", line], where, env, ok=False)
            # `imagebatch init --diff` exits 1 when a file differs, as diff(1) does
            assert proc.returncode == 0, f"{line} (in {where}):\n{proc.stdout}\n{proc.stderr}"
            ran.append(line)
            said[line.split("#")[0].strip()] = proc
    return Newcomer(tmp, clone, site, venv, env, ran, used, said)


@pytest.mark.slow
@pytest.mark.wheel
def test_the_readme_and_getting_started_commands_run_as_written(newcomer: Newcomer) -> None:
    assert newcomer.used == set(NOT_RUN)
    for line in ("python -m pip install ./imagebatch", "make -C imagebatch wheel",
                 "imagebatch --version", "imagebatch init", "make assets", "make run"):
        assert any(r.split("#")[0].strip() == line for r in newcomer.ran), (line, newcomer.ran)
    assert (newcomer.site / "outputs" / "example" / "index.html").is_file()
    assert (newcomer.site / "assets" / "example" / "assets.json").is_file()
    assert (newcomer.clone / "outputs" / "example" / "index.html").is_file()

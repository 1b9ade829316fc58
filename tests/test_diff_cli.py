"""`imagebatch diff` through the command line, in real git repositories made in tmp_path:
--against a revision or a file, the default merge base, subfolders, the bad inputs, what a
run would send against real outputs (and that diff itself sends nothing), and the
pull-request workflow: its script run on a repository, its schema and zizmor."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from diff_helpers import LAUNCH
from tool_helpers import check_jsonschema, tool

from imagebatch.cli import main
from imagebatch.commands import scaffold
from imagebatch.service.server import ServerOptions, running_server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKFLOW = ROOT / ".github" / "workflows" / "imagebatch-diff.yml"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def _git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git as on a fresh machine: no user or system configuration, a fixed identity."""
    empty = tmp_path / "gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")
    monkeypatch.delenv("IMAGEBATCH_PRICE", raising=False)


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    """Write (or, for None, delete) files and commit them; the new commit's hash."""
    for rel, text in files.items():
        path = repo / rel
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with manifests/launch.yaml on main, one commit."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, {"manifests/launch.yaml": LAUNCH}, "launch")
    return root


def diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diff", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def diff_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = diff(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def counts(doc: dict, index: int = 0) -> dict:
    return doc["manifests"][index]["counts"]


EDITED = (LAUNCH.replace("A paper boat", "A paper boat at sea")
          .replace("seeds: [1, 2, 3]", "seeds: [1, 2, 3, 4]"))


# --- against a revision, the default, a file -----------------------------------------------


def test_against_a_revision_in_a_repository_with_two_commits(repo, capsys, monkeypatch):
    first = git(repo, "rev-parse", "HEAD")
    commit(repo, {"manifests/launch.yaml": EDITED}, "edit")
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", first)
    assert counts(doc) == {"added": 2, "removed": 0, "changed": 1, "moved": 0,
                           "unchanged": 6, "stale_picks": 0}
    m = doc["manifests"][0]
    assert m["old"] == {"source": f"{first}:manifests/launch.yaml", "state": "ok", "jobs": 7,
                        "problems": []}
    assert doc["against"]["commit"] == first and doc["against"]["merge_base"] is False
    assert [j["path"] for j in m["added"]] == ["fox/ink/4.png", "fox/clay/4.png"]
    assert m["changed"] == [{"path": "boat/5.png", "old_key": m["changed"][0]["old_key"],
                             "new_key": m["changed"][0]["new_key"],
                             "fields": [{"field": "prompt", "old": "A paper boat",
                                         "new": "A paper boat at sea"}]}]
    # no outputs here: what is sent is what the change adds or changes
    assert m["to_send"] == 3 and m["to_send_from"] == "change" and m["cost"] is None
    # against HEAD itself (a branch name works too): nothing changed
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD")
    assert counts(doc)["unchanged"] == 9 and doc["manifests"][0]["to_send"] == 0


def test_the_default_is_the_merge_base_with_main(repo, capsys, monkeypatch):
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"manifests/launch.yaml": LAUNCH.replace("A paper boat", "A boat")}, "feature")
    git(repo, "checkout", "-q", "main")  # main moves on after the branch was made
    commit(repo, {"manifests/launch.yaml": LAUNCH.replace("seeds: [5]", "seeds: [5, 6]")},
           "main moves on")
    git(repo, "checkout", "-q", "feature")
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/launch.yaml")
    assert doc["against"]["commit"] == base and doc["against"]["merge_base"] is True
    assert doc["against"]["text"] == f"main (merge base {base[:12]})"
    # only the branch's own change: main's added seed is not shown as removed
    assert counts(doc) == {"added": 0, "removed": 0, "changed": 1, "moved": 0,
                           "unchanged": 6, "stale_picks": 0}


def test_the_working_tree_is_compared_as_it_is(repo, capsys, monkeypatch):
    (repo / "manifests" / "launch.yaml").write_text(EDITED)  # not committed
    monkeypatch.chdir(repo)
    code, out, _ = diff(capsys, "manifests/launch.yaml")  # on main: the base is HEAD
    assert code == 0
    assert "7 -> 9 jobs: 2 added, 0 removed, 1 changed, 0 moved, 6 unchanged" in out
    assert "  changed  boat/5.png  (prompt)" in out


def test_a_manifest_path_relative_to_a_subfolder(tmp_path, capsys, monkeypatch):
    root = tmp_path / "game"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    first = commit(root, {"art/manifests/launch.yaml": LAUNCH}, "launch")
    commit(root, {"art/manifests/launch.yaml": EDITED}, "edit")
    monkeypatch.chdir(root / "art" / "manifests")
    doc = diff_json(capsys, "launch.yaml", "--against", "HEAD~1")
    assert doc["manifests"][0]["old"]["source"] == "HEAD~1:art/manifests/launch.yaml"
    assert counts(doc)["added"] == 2 and counts(doc)["changed"] == 1
    assert doc["against"]["commit"] == first
    monkeypatch.chdir(root / "art")
    doc = diff_json(capsys, "./manifests/../manifests/launch.yaml", "--against", first)
    assert counts(doc)["added"] == 2


def test_the_default_follows_origin_head_in_a_clone(tmp_path, capsys, monkeypatch):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "trunk")  # neither main nor master
    commit(upstream, {"manifests/launch.yaml": LAUNCH}, "launch")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(upstream), str(clone)], check=True, timeout=60)
    assert git(clone, "symbolic-ref", "refs/remotes/origin/HEAD") == "refs/remotes/origin/trunk"
    git(clone, "checkout", "-q", "-b", "feature")
    commit(clone, {"manifests/launch.yaml": EDITED}, "edit")
    monkeypatch.chdir(clone)
    doc = diff_json(capsys, "manifests/launch.yaml")
    assert doc["against"]["text"].startswith("origin/trunk (merge base ")
    assert counts(doc)["added"] == 2
    # the upstream itself has no origin, main or master: said, exit 2
    monkeypatch.chdir(upstream)
    code, out, err = diff(capsys, "manifests/launch.yaml")
    assert code == 2 and out == ""
    assert "no default branch to compare with (no origin/HEAD, main or master)" in err
    assert err.count("\n") == 1


def test_against_another_manifest_file_needs_no_git(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a repository
    Path("old.yaml").write_text(LAUNCH)
    Path("new.yaml").write_text(EDITED.replace("id: boat", "id: ship"))
    doc = diff_json(capsys, "new.yaml", "--against", "old.yaml", "--price", "0.08")
    assert doc["against"] == {"kind": "file", "path": "old.yaml"}
    assert counts(doc) == {"added": 3, "removed": 1, "changed": 0, "moved": 0,
                           "unchanged": 6, "stale_picks": 0}
    assert doc["manifests"][0]["cost"] == "0.24" and doc["price"]["text"] == "$0.08"


def test_a_renamed_job_shows_as_moved_and_its_pick_goes_stale(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert main(["pick", "manifests/launch.yaml", "boat/5.png", "fox/ink/1.png"]) == 0
    assert main(["pick", "manifests/launch.yaml", "fox/clay/2.png", "--rating", "4"]) == 0
    commit(repo, {}, "picks")
    (repo / "manifests" / "launch.yaml").write_text(
        LAUNCH.replace("id: boat", "id: paper-boat")
        .replace("A fox in the snow, {style}", "A fox at dusk, {style}"))
    capsys.readouterr()
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD")
    m = doc["manifests"][0]
    assert m["moved"] == [{"old_path": "boat/5.png", "path": "paper-boat/5.png",
                           "key": m["moved"][0]["key"]}]
    assert m["picks_file"] == "manifests/launch.picks.json"
    assert [(s["path"], s["status"], s["rating"], s["why"], s["moved_to"])
            for s in m["stale_picks"]] == [
        ("boat/5.png", "pick", None, "moved", "paper-boat/5.png"),
        ("fox/clay/2.png", None, 4, "changed", None),
        ("fox/ink/1.png", "pick", None, "changed", None)]
    code, md, _ = diff(capsys, "manifests/launch.yaml", "--against", "HEAD", "--markdown")
    assert code == 0 and "**3 picks go stale** in `manifests/launch.picks.json`:" in md
    assert "- `fox/ink/1.png`: pick; its job changed" in md
    assert "- `boat/5.png`: pick; its job moved to `paper-boat/5.png`" in md


def test_a_renamed_manifest_with_the_same_name_is_compared_with_its_old_file(
        repo, capsys, monkeypatch):
    # the workflow lists a rename as a deletion and an addition (--no-renames): both given
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "mv", "manifests/launch.yaml", "manifests/spring-launch.yaml")  # name: launch
    commit(repo, {"manifests/spring-launch.yaml": EDITED}, "rename and edit")
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/spring-launch.yaml", "manifests/launch.yaml",
                    "--against", base)
    (m,) = doc["manifests"]  # the old file is not shown again as all removed
    assert m["old"]["source"] == f"{base}:manifests/launch.yaml"
    assert counts(doc) == {"added": 2, "removed": 0, "changed": 1, "moved": 0,
                           "unchanged": 6, "stale_picks": 0}
    assert m["to_send"] == 3  # what the edit adds or changes, not 9 jobs as all new
    assert any("renamed from manifests/launch.yaml" in n for n in m["notes"]), m["notes"]
    # a rename that changes `name:` is another outputs folder: all new work, as before
    commit(repo, {"manifests/spring-launch.yaml": EDITED.replace("name: launch",
                                                                 "name: spring")}, "rename")
    doc = diff_json(capsys, "manifests/spring-launch.yaml", "--against", base)
    assert counts(doc)["added"] == 9 and doc["manifests"][0]["old"]["state"] == "missing"


def test_several_manifests_one_table(repo, capsys, monkeypatch):
    commit(repo, {"manifests/other.yaml": LAUNCH.replace("name: launch", "name: other")},
           "other")
    (repo / "manifests" / "launch.yaml").write_text(EDITED)
    monkeypatch.chdir(repo)
    code, md, err = diff(capsys, "manifests/launch.yaml", "manifests/other.yaml",
                         "--against", "HEAD", "--markdown", "--price", "$0.05")
    assert code == 0, err
    assert "| `manifests/launch.yaml` | 7 → 9 | 2 | 0 | 1 | 0 | 6 | 3 | $0.15 | 0 |" in md
    assert "| `manifests/other.yaml` | 7 → 7 | 0 | 0 | 0 | 0 | 7 | 0 | $0.00 | 0 |" in md
    assert "| **all** | | | | | | | **3** | **$0.15** | |" in md
    assert "No job changes." in md


# --- bad input -----------------------------------------------------------------------------


def test_a_revision_that_does_not_exist_exits_2(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    for rev in ("no-such-branch", "0123456789abcdef0123456789abcdef01234567", "--help",
                "HEAD~5"):
        code, out, err = diff(capsys, "manifests/launch.yaml", f"--against={rev}")
        assert code == 2 and out == "", (rev, out)
        assert err.startswith("imagebatch: --against ") and err.count("\n") == 1, err


def test_not_a_git_repository_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("launch.yaml").write_text(LAUNCH)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for args in ([], ["--against", "main"]):
        code, out, err = diff(capsys, "launch.yaml", *args)
        assert code == 2 and out == ""
        assert "is not in a git repository" in err and "--against FILE" in err
        assert err.count("\n") == 1


def test_a_manifest_that_did_not_exist_at_the_revision_is_all_added(repo, capsys,
                                                                    monkeypatch):
    first = git(repo, "rev-parse", "HEAD")
    commit(repo, {"manifests/new.yaml": LAUNCH.replace("name: launch", "name: new")}, "new")
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/new.yaml", "--against", first)
    m = doc["manifests"][0]
    assert m["old"]["state"] == "missing" and m["old"]["jobs"] is None
    assert counts(doc)["added"] == 7 and m["to_send"] == 7
    code, out, _ = diff(capsys, "manifests/new.yaml", "--against", first)
    assert f"{first}:manifests/new.yaml does not exist: every job is added" in out


def test_a_manifest_invalid_at_the_revision_is_located_and_the_diff_still_shown(
        repo, capsys, monkeypatch):
    broken = LAUNCH.replace("seeds: [5]", "seeds: [5, 5]").replace("prompt: \"A paper boat\"",
                                                                   "promt: \"A paper boat\"")
    commit(repo, {"manifests/launch.yaml": broken}, "broken")
    commit(repo, {"manifests/launch.yaml": LAUNCH}, "fixed")
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD~1")
    m = doc["manifests"][0]
    assert m["old"]["state"] == "invalid"
    assert any(p.startswith("HEAD~1:manifests/launch.yaml:10:5: jobs[1].promt: unknown key")
               for p in m["old"]["problems"]), m["old"]["problems"]
    assert counts(doc)["added"] == 7 and "every job of the plan now is shown as added" in \
        m["notes"][0]
    code, out, err = diff(capsys, "manifests/launch.yaml", "--against", "HEAD~1")
    assert code == 0 and err == ""
    assert "HEAD~1:manifests/launch.yaml cannot be read as a manifest" in out
    assert "  HEAD~1:manifests/launch.yaml:10:5: jobs[1].promt:" in out
    assert "  added    boat/5.png" in out


def test_a_manifest_deleted_now_is_all_removed_and_one_missing_everywhere_exits_2(
        repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    (repo / "manifests" / "launch.yaml").unlink()
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD")
    assert counts(doc)["removed"] == 7 and doc["manifests"][0]["new"]["state"] == "missing"
    assert doc["manifests"][0]["to_send"] == 0
    code, out, err = diff(capsys, "manifests/nothing.yaml", "--against", "HEAD")
    assert code == 2 and out == "" and "no such manifest file, now or in HEAD:" in err


def test_an_invalid_manifest_now_exits_2_with_its_location(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    (repo / "manifests" / "launch.yaml").write_text(LAUNCH.replace("seeds: [5]", "seeds: x"))
    code, out, err = diff(capsys, "manifests/launch.yaml", "--against", "HEAD")
    assert code == 2 and out == ""
    assert err.startswith("manifests/launch.yaml:11:12: jobs[1].seeds:"), err


@pytest.mark.parametrize("price", ["abc", "-1", "nan", "0.08.1", "5000"])
def test_a_price_that_is_not_a_number_exits_2_before_git_is_asked(tmp_path, capsys,
                                                                  monkeypatch, price):
    monkeypatch.chdir(tmp_path)  # not even a repository: the price is refused first
    Path("launch.yaml").write_text(LAUNCH)
    code, out, err = diff(capsys, "launch.yaml", "--price", price)
    assert code == 2 and out == "" and err.startswith("imagebatch: --price: ")
    monkeypatch.setenv("IMAGEBATCH_PRICE", price)
    code, out, err = diff(capsys, "launch.yaml")
    assert code == 2 and err.startswith("imagebatch: IMAGEBATCH_PRICE: ")


def test_options_that_do_not_go_together_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.yaml").write_text(LAUNCH)
    Path("b.yaml").write_text(LAUNCH.replace("name: launch", "name: b"))
    code, _, err = diff(capsys, "a.yaml", "b.yaml", "--against", "a.yaml")
    assert code == 2 and "a file is compared with one manifest, not 2" in err
    code, _, err = diff(capsys, "a.yaml", "--json", "--markdown")
    assert code == 2 and "not allowed with argument" in err


def test_a_broken_picks_file_is_a_note_not_a_failure(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    (repo / "manifests" / "launch.picks.json").write_text("{not json")
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD")
    assert doc["manifests"][0]["stale_picks"] == []
    assert "cannot be read, so no stale pick is named" in doc["manifests"][0]["notes"][0]


def test_no_traceback_from_the_installed_command(tmp_path):
    exe = BIN / "imagebatch"
    if not exe.exists():
        pytest.skip("the imagebatch script is not installed")
    (tmp_path / "launch.yaml").write_text(LAUNCH)
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    for args in (["launch.yaml"], ["launch.yaml", "--price", "x"],
                 ["launch.yaml", "--against", "nope"]):
        proc = subprocess.run([str(exe), "diff", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2 and proc.stdout == ""
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# --- what a run would send, against real outputs; diff sends nothing -----------------------


async def test_to_send_is_judged_against_the_outputs_and_backend_run_uses(repo, capsys,
                                                                         monkeypatch):
    monkeypatch.chdir(repo)
    async with running_server(ServerOptions(flat=True)) as srv:
        monkeypatch.setenv("DIFFUSION_URL", srv.url)
        monkeypatch.setenv("DIFFUSION_KEY", "test-key")
        code = await asyncio.to_thread(main, ["run", "manifests/launch.yaml", "--no-post",
                                              "--rpm", "0"])
        assert code == 0 and srv.stats.requests == 7
        (repo / "manifests" / "launch.yaml").write_text(EDITED)
        capsys.readouterr()
        doc = await asyncio.to_thread(
            diff_json, capsys, "manifests/launch.yaml", "--against", "HEAD", "--price", "0.1")
        m = doc["manifests"][0]
        assert m["to_send_from"] == "outputs" and m["outputs"] == "outputs/launch"
        assert m["to_send"] == 3 and m["cost"] == "0.30"  # 2 added + 1 changed; 6 are done
        # judged against the embedded server instead, none of those images counts as done
        doc = await asyncio.to_thread(
            diff_json, capsys, "manifests/launch.yaml", "--against", "HEAD", "--local")
        assert doc["manifests"][0]["to_send"] == 9
        # an image removed from disk is not done any more: one more to send
        (repo / "outputs" / "launch" / "images" / "fox" / "ink" / "1.png").unlink()
        doc = await asyncio.to_thread(
            diff_json, capsys, "manifests/launch.yaml", "--against", "HEAD")
        assert doc["manifests"][0]["to_send"] == 4
        assert srv.stats.requests == 7  # diff sent nothing


# --- the pull-request workflow -------------------------------------------------------------


@pytest.mark.parametrize("which", ["repository", "init"])
def test_the_workflow_is_schema_valid_and_zizmor_clean(tmp_path, which):
    if which == "repository":
        path = WORKFLOW
    else:
        path = tmp_path / "imagebatch-diff.yml"
        path.write_text(scaffold.diff_workflow_text("imagebatch==0.1.0"))
    code, said = check_jsonschema("--builtin-schema", "vendor.github-workflows", str(path))
    assert code == 0, said
    proc = subprocess.run([tool("zizmor"), "--offline", "--persona", "pedantic",
                           "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("path", [WORKFLOW, None])
def test_the_workflow_is_safe_for_forks(path):
    text = path.read_text() if path else scaffold.diff_workflow_text("imagebatch==0.1.0")
    doc = yaml.safe_load(text)
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads the key `on` as true
    assert list(on) == ["pull_request"] and on["pull_request"]["paths"] == ["manifests/**"]
    assert "pull_request_target" not in text and "secrets." not in text
    assert doc["permissions"] == {}
    jobs = doc["jobs"]
    assert jobs["diff"]["permissions"] == {"contents": "read"}
    assert jobs["comment"]["permissions"] == {"pull-requests": "write"}
    # the job that can write runs no code of the pull request: no checkout, no install
    assert not any("checkout" in step.get("uses", "") or "pip" in step.get("run", "")
                   for step in jobs["comment"]["steps"])
    assert "head.repo.full_name == github.repository" in jobs["comment"]["if"]
    assert "vars.IMAGEBATCH_DIFF_COMMENT == 'true'" in jobs["comment"]["if"]
    checkout = jobs["diff"]["steps"][0]
    assert checkout["with"] == {"persist-credentials": False, "fetch-depth": 0}
    for job in jobs.values():  # no expression is pasted into a script: values go by env
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step


def _step_script(name: str) -> str:
    doc = yaml.safe_load(WORKFLOW.read_text())
    (script,) = [s["run"] for s in doc["jobs"]["diff"]["steps"] if s.get("name") == name]
    return script


def _pull_request(tmp_path: Path) -> tuple[Path, str]:
    """A repository as the workflow's checkout has it: base commit, then the merge of a pull
    request that edits one manifest, deletes one, adds one, and touches a picks file."""
    root = tmp_path / "pr"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    base = commit(root, {"manifests/launch.yaml": LAUNCH,
                         "manifests/gone.yaml": LAUNCH.replace("name: launch", "name: gone"),
                         "manifests/same.yaml": LAUNCH.replace("name: launch", "name: same"),
                         "README.md": "x\n"}, "base")
    commit(root, {"manifests/launch.yaml": EDITED, "manifests/gone.yaml": None,
                  "manifests/art/new.yaml": LAUNCH.replace("name: launch", "name: new"),
                  "manifests/launch.picks.json": '{"version": 1, "manifest": "launch", '
                                                 '"picks": {}}\n'}, "pr")
    return root, base


def _run_step(root: Path, base: str, tmp_path: Path, **env: str) -> tuple[int, str]:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    summary = tmp_path / "step-summary.md"
    summary.write_text("")
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "BASE_SHA": base, "GITHUB_STEP_SUMMARY": str(summary), "IMAGEBATCH_PRICE": "",
            **env}
    proc = subprocess.run(["bash", "-e", "-c", _step_script("Plan diff")], cwd=root, env=full,
                          capture_output=True, text=True, timeout=300, check=False)
    assert (root / "imagebatch-diff.md").read_text() == summary.read_text()
    return proc.returncode, summary.read_text()


def test_the_workflow_step_writes_the_diff_of_the_changed_manifests(tmp_path):
    root, base = _pull_request(tmp_path)
    code, md = _run_step(root, base, tmp_path, IMAGEBATCH_PRICE="0.08")
    assert code == 0, md
    assert md.startswith("## imagebatch plan diff\n")
    assert f"Compared with `{base}`." in md
    assert "| `manifests/launch.yaml` | 7 → 9 | 2 | 0 | 1 | 0 | 6 | 3 | $0.24 | 0 |" in md
    assert "| `manifests/gone.yaml` | 7 → – | 0 | 7 | 0 | 0 | 0 | 0 | $0.00 | 0 |" in md
    assert "| `manifests/art/new.yaml` | – → 7 | 7 | 0 | 0 | 0 | 0 | 7 | $0.56 | 0 |" in md
    assert "same.yaml" not in md  # unchanged by the pull request: not listed


def test_the_workflow_step_diffs_a_manifest_whose_prompts_lock_changed(tmp_path, capsys,
                                                                       monkeypatch):
    # a pull request that changes only a lock (`expand --again`) is diffed as its manifest
    root, _base = _pull_request(tmp_path)
    brief = ("version: 1\nname: poster\njobs:\n  - id: poster\n    prompts:\n"
             "      brief: a travel poster\n      count: 2\n    seeds: [1]\n")
    base = commit(root, {"manifests/poster.yaml": brief}, "a brief")
    assert main(["expand", str(root / "manifests/poster.yaml")]) == 0
    commit(root, {}, "its lock")
    lock = root / "manifests/poster.prompts.lock"
    assert lock.is_file()
    lock.write_text(lock.read_text().replace("    - a travel poster",
                                             "    - A new take on a travel poster", 1))
    commit(root, {}, "one prompt edited by hand")
    code, md = _run_step(root, base, tmp_path, IMAGEBATCH_PRICE="0.08")
    assert code == 0, md
    assert "`manifests/poster.yaml`" in md and md.count("`manifests/poster.yaml` |") == 1
    # against the commit with the lock: the one prompt edited by hand, old and new, and the
    # one request it costs
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert main(["diff", "manifests/poster.yaml", "--against", "HEAD~1", "--markdown",
                 "--price", "0.08"]) == 0
    shown = capsys.readouterr().out
    assert "| `manifests/poster.yaml` | 2 → 2 | 0 | 0 | 1 | 0 | 1 | 1 | $0.08 | 0 |" in shown
    assert "\n- a travel poster" in shown and "\n+ A new take on a travel poster" in shown


def test_the_workflow_step_reports_a_broken_manifest_and_fails(tmp_path):
    root, base = _pull_request(tmp_path)
    commit(root, {"manifests/launch.yaml": "version: 1\njobs: 3\nx````y: 1\n"}, "break it")
    code, md = _run_step(root, base, tmp_path)
    assert code == 2
    assert "`imagebatch diff` failed:" in md and "manifests/launch.yaml:2:7: jobs:" in md
    # the message quotes the key, but cannot close the fence around it
    assert "unknown key 'x''''y'" in md, md
    assert md.count("````") == 2


def test_the_workflow_step_with_no_manifest_changed(tmp_path):
    root, base = _pull_request(tmp_path)
    code, md = _run_step(root, git(root, "rev-parse", "HEAD"), tmp_path)
    assert code == 0 and "No manifest changed." in md


# --- git, bounded --------------------------------------------------------------------------


def test_git_output_past_its_bound_is_refused(repo):
    from imagebatch.commands.diff import GitError, run_git

    code, out, _ = run_git(repo, ["log", "--format=%H"])
    assert code == 0 and len(out) == 41
    with pytest.raises(GitError, match="answered more than 10 bytes"):
        run_git(repo, ["log", "--format=%H"], limit=10)


def test_a_git_that_hangs_is_stopped(tmp_path, monkeypatch):
    from imagebatch.commands import diff as diff_module

    fake = tmp_path / "bin"
    fake.mkdir()
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("sleep is not installed")
    (fake / "git").write_text(f"#!/bin/sh\nexec {sleep} 30\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    monkeypatch.setattr(diff_module, "GIT_TIMEOUT", 0.5)
    with pytest.raises(diff_module.GitError, match="was stopped"):
        diff_module.run_git(tmp_path, ["rev-parse", "--show-toplevel"])


def test_no_git_installed_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("launch.yaml").write_text(LAUNCH)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    code, out, err = diff(capsys, "launch.yaml")
    assert code == 2 and out == "" and err.startswith("imagebatch: git is not installed")


def test_a_manifest_too_big_at_the_revision_is_not_read(repo, capsys, monkeypatch):
    from imagebatch.commands import diff as diff_module

    monkeypatch.setattr(diff_module, "MAX_FILE_BYTES", 100)
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD")
    m = doc["manifests"][0]
    assert m["old"]["state"] == "invalid" and counts(doc)["added"] == 7
    assert m["old"]["problems"] == [
        f"HEAD:manifests/launch.yaml: is {len(LAUNCH)} bytes there; a manifest may be at most "
        "100"]


def test_a_folder_at_the_revision_is_not_a_manifest(repo, capsys, monkeypatch):
    commit(repo, {"manifests/launch.yaml": None, "manifests/launch.yaml/inner.txt": "x"},
           "a folder")
    (repo / "manifests" / "launch.yaml" / "inner.txt").unlink()
    (repo / "manifests" / "launch.yaml").rmdir()
    (repo / "manifests" / "launch.yaml").write_text(LAUNCH)
    monkeypatch.chdir(repo)
    doc = diff_json(capsys, "manifests/launch.yaml", "--against", "HEAD")
    assert doc["manifests"][0]["old"]["problems"] == [
        "HEAD:manifests/launch.yaml: is a folder there, not a file"]


def test_the_init_workflow_runs_the_same_steps_as_the_repositorys():
    mine = yaml.safe_load(scaffold.diff_workflow_text("imagebatch==0.1.0"))
    ours = yaml.safe_load(WORKFLOW.read_text())
    for job in ("diff", "comment"):
        for a, b in zip(mine["jobs"][job]["steps"], ours["jobs"][job]["steps"], strict=True):
            if a.get("name") == "Install imagebatch":
                assert a["run"] == 'python -m pip install "$IMAGEBATCH_REQUIREMENT"'
                continue
            if "setup-python" in a.get("uses", ""):
                continue
            assert a == b  # the step tested above is the step init writes


async def test_what_the_shared_cache_holds_is_not_counted_as_sent(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    share = repo.parent / "share"
    share.mkdir()
    commit(repo, {"manifests/launch.yaml": EDITED}, "edit")
    async with running_server(ServerOptions(flat=True)) as srv:
        monkeypatch.setenv("DIFFUSION_URL", srv.url)
        monkeypatch.setenv("DIFFUSION_KEY", "test-key")
        # CI made the edited plan into the shared cache from its own folder
        code = await asyncio.to_thread(main, ["run", "manifests/launch.yaml", "--no-post",
                                              "--rpm", "0", "--out", str(repo.parent / "ci"),
                                              "--cache", str(share)])
        assert code == 0 and srv.stats.requests == 9
        capsys.readouterr()
        # here, with no outputs: the 3 jobs the change makes are all in the cache
        doc = await asyncio.to_thread(diff_json, capsys, "manifests/launch.yaml",
                                      "--against", "HEAD~1", "--cache", str(share))
        m = doc["manifests"][0]
        assert m["to_send"] == 0
        assert any("3 of the jobs to make are in the shared cache" in n for n in m["notes"])
        # $IMAGEBATCH_CACHE is read as `run` reads it; without a cache all 3 are to send
        monkeypatch.setenv("IMAGEBATCH_CACHE", str(share))
        doc = await asyncio.to_thread(diff_json, capsys, "manifests/launch.yaml",
                                      "--against", "HEAD~1")
        assert doc["manifests"][0]["to_send"] == 0
        monkeypatch.delenv("IMAGEBATCH_CACHE")
        doc = await asyncio.to_thread(diff_json, capsys, "manifests/launch.yaml",
                                      "--against", "HEAD~1")
        assert doc["manifests"][0]["to_send"] == 3
        assert srv.stats.requests == 9  # diff sent nothing


def test_an_input_image_is_read_at_the_old_revision_so_a_new_one_shows_as_changed(
        repo, capsys, monkeypatch):
    import io as _io

    from PIL import Image

    def png(color: tuple[int, int, int]) -> bytes:
        buf = _io.BytesIO()
        Image.new("RGB", (96, 128), color).save(buf, "PNG")
        return buf.getvalue()

    vary = ("version: 1\nname: vary\njobs:\n  - id: more\n    prompt: a fox\n"
            "    image: picks/fox.png\n    strength: 0.4\n    seeds: [1, 2]\n")
    (repo / "manifests" / "picks").mkdir()
    (repo / "manifests" / "picks" / "fox.png").write_bytes(png((200, 40, 40)))
    commit(repo, {"manifests/vary.yaml": vary}, "variations")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DIFFUSION_PROVIDER", "stability")
    # unchanged: the old plan reads the image as it was then, and it is the same
    assert counts(diff_json(capsys, "manifests/vary.yaml", "--against", "HEAD"))["unchanged"] == 2
    # a new input image regenerates every job made from it
    (repo / "manifests" / "picks" / "fox.png").write_bytes(png((40, 40, 200)))
    got = counts(diff_json(capsys, "manifests/vary.yaml", "--against", "HEAD"))
    assert (got["changed"], got["unchanged"], got["added"]) == (2, 0, 0)
    # an input image not in the old revision: the old plan cannot be read, located
    commit(repo, {"manifests/vary.yaml": vary.replace("picks/fox.png", "picks/new.png")},
           "a new pick")
    (repo / "manifests" / "picks" / "new.png").write_bytes(png((0, 200, 0)))
    doc = diff_json(capsys, "manifests/vary.yaml", "--against", "HEAD")
    m = doc["manifests"][0]
    assert m["old"]["state"] == "invalid" and counts(doc)["added"] == 2
    assert any("HEAD:manifests/vary.yaml:6:12: jobs[0].image" in p and "not in" in p
               for p in m["old"]["problems"]), m["old"]["problems"]

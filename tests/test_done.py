"""One definition of done, seen alike by `run` (what it skips), `status`, the contact sheet
and index.html; integrity checked on resume; nothing sent that cannot be saved.

Every test drives the command line against the embedded server over 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from done_helpers import assert_page_agrees, cli, index_states, status_states, switchable_server
from PIL import Image

from imagebatch.pictures import imaging
from imagebatch.pictures.post import build_all
from imagebatch.planning.manifest import load_plan
from imagebatch.storage.store import RESULTS, job_states

RUN = ("--rpm", "0", "--retries", "0")


def _manifest(path: Path, prompt: str, *, name: str = "base", seeds: str = "[5]",
              template: str | None = None) -> Path:
    out = "output:\n  thumbnail: 32\n" + (f"  path: \"{template}\"\n" if template else "")
    path.write_text(f"version: 1\nname: {name}\n{out}jobs:\n  - id: hero\n"
                    f"    prompt: \"{prompt}\"\n    seeds: {seeds}\n")
    return path


def _run(manifest: Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    code, text, err = cli("run", str(manifest), "--out", str(out), "--json", *RUN, *extra)
    return code, json.loads(text), err


def _sheet_cells(manifest: Path, root: Path, backend: str) -> dict[str, str]:
    """The contact sheet's cells as laid out: path -> ok | failed | missing."""
    result = build_all(load_plan(str(manifest)), root, backend=backend, workers=1)
    return {c.entry.job.path: c.entry.state for page in result.pages for c in page.cells}


# -- 1. another prompt's image is not this job's ---------------------------------------

def test_prompt_changed_and_back_shows_no_image_of_the_other_prompt(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        assert _run(m, out)[0] == 0
        _manifest(m, "a wizard")
        assert _run(m, out)[0] == 0
        _manifest(m, "a knight")
        ((state, _),) = status_states(m, out).values()
        assert state == "pending"
        assert cli("sheet", str(m), "--out", str(out))[0] == 0
        shown, counts = index_states(root)
        assert list(shown.values()) == ["missing"] and counts == (0, 0, 1)
        assert_page_agrees(m, out, root)
        assert _sheet_cells(m, root, srv.url) == {"hero/5.png": imaging.MISSING}
        # and run agrees: it makes the knight again (one request), then all three say done
        before = srv.requests
        code, summary, _ = _run(m, out)
        assert code == 0 and summary["succeeded"] == 1 and srv.requests == before + 1
        assert_page_agrees(m, out, root)
        assert index_states(root)[1] == (1, 0, 0)


def test_two_manifests_sharing_a_name_do_not_show_each_others_images(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    knight = _manifest(tmp_path / "knight.yaml", "a knight")
    wizard = _manifest(tmp_path / "wizard.yaml", "a wizard")
    with switchable_server(monkeypatch):
        assert _run(knight, out)[0] == 0
        assert _run(wizard, out)[0] == 0  # same name, same path: overwrites the knight
        assert [s for s, _ in status_states(knight, out).values()] == ["pending"]
        assert cli("sheet", str(knight), "--out", str(out))[0] == 0
        assert index_states(root)[1] == (0, 0, 1)
        assert_page_agrees(knight, out, root)
        assert cli("sheet", str(wizard), "--out", str(out))[0] == 0
        assert index_states(root)[1] == (1, 0, 0)
        assert_page_agrees(wizard, out, root)


# -- 2. a failed --force leaves the old image done, and the page says so ------------------

def test_failed_force_run_leaves_the_job_done_everywhere(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        assert _run(m, out)[0] == 0
        image = (root / "images/hero/5.png").read_bytes()
        srv.failing(True)
        code, summary, _ = _run(m, out, "--force")
        assert code == 1 and summary["failures"][0]["reason"].startswith("HTTP 503")
        assert (root / "images/hero/5.png").read_bytes() == image  # the old image stays
        # the forced attempt failed, but the image it would have replaced is intact: done
        assert [s for s, _ in status_states(m, out).values()] == ["done"]
        assert_page_agrees(m, out, root)
        srv.failing(False)
        before = srv.requests
        code, summary, _ = _run(m, out)
        assert code == 0 and summary["skipped"] == 1 and srv.requests == before
        assert index_states(root)[1] == (1, 0, 0)
        assert_page_agrees(m, out, root)
        assert _sheet_cells(m, root, srv.url) == {"hero/5.png": imaging.OK}


def test_sheet_command_judges_against_the_backend_status_uses(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch):
        assert _run(m, out)[0] == 0
        assert cli("sheet", str(m), "--out", str(out))[0] == 0
        assert index_states(root)[1] == (1, 0, 0)
        assert_page_agrees(m, out, root)
        # The embedded local server made none of these: for it, nothing is done yet.
        assert cli("sheet", str(m), "--out", str(out), "--local")[0] == 0
        assert index_states(root)[1] == (0, 0, 1)
        assert_page_agrees(m, out, root, "--local")
    monkeypatch.delenv("DIFFUSION_URL")
    assert cli("sheet", str(m), "--out", str(out))[0] == 0
    assert index_states(root)[1] == (0, 0, 1)
    assert_page_agrees(m, out, root)


# -- 3. nothing sent that cannot be saved -----------------------------------------------

def test_symlinked_folder_leaving_images_costs_no_request(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    (root / "images").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "images" / "a")
    m = _manifest(tmp_path / "m.yaml", "a {c} knight", template="a/{c}/{seed}.{ext}",
                  seeds="[1, 2]")
    m.write_text(m.read_text() + "    matrix:\n      c: [blue, red]\n")
    with switchable_server(monkeypatch) as srv:
        for _ in range(2):  # and a re-run pays nothing either
            code, summary, err = _run(m, out)
            assert srv.requests == 0
            assert code == 1 and summary["failed"] == 4 and summary["requests"] == 0
            reasons = {f["path"]: f["reason"] for f in summary["failures"]}
            assert set(reasons) == {"a/blue/1.png", "a/blue/2.png", "a/red/1.png", "a/red/2.png"}
            for reason in reasons.values():
                assert "leads outside" in reason and "symbolic link" in reason, reason
            assert "Traceback" not in err
        assert not list(elsewhere.rglob("*"))
        recs = [json.loads(x) for x in (root / RESULTS).read_text().splitlines()]
        assert {r["status"] for r in recs} == {"failed"} and {r["attempts"] for r in recs} == {0}
        assert_page_agrees(m, out, root)
        # the link removed, the same command makes all four
        os.unlink(root / "images" / "a")
        code, summary, _ = _run(m, out)
        assert code == 0 and summary["succeeded"] == 4 and srv.requests == 4


def test_image_path_that_is_a_folder_costs_no_request(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    (root / "images" / "hero" / "5.png").mkdir(parents=True)
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        code, summary, _ = _run(m, out)
        assert code == 1 and srv.requests == 0
        assert "is a folder" in summary["failures"][0]["reason"]


# -- 5. an image damaged in place is not done ---------------------------------------------

def test_image_damaged_in_place_at_the_same_size_is_made_again(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    # a landscape: 1,000 bytes fit inside it (a flat picture's PNG is about a kilobyte)
    with switchable_server(monkeypatch, flat=False) as srv:
        assert _run(m, out)[0] == 0
        path = root / "images/hero/5.png"
        good = path.read_bytes()
        with open(path, "r+b") as fh:  # 1,000 bytes overwritten in the middle, size unchanged
            fh.seek(len(good) // 2)
            fh.write(b"\0" * 1000)
        assert path.stat().st_size == len(good)
        assert [s for s, _ in status_states(m, out).values()] == ["pending"]
        assert cli("sheet", str(m), "--out", str(out))[0] == 0
        assert_page_agrees(m, out, root)
        before = srv.requests
        code, summary, _ = _run(m, out)
        assert code == 0 and summary["succeeded"] == 1 and srv.requests == before + 1
        assert path.read_bytes() == good
        with Image.open(path) as img:
            img.load()
        assert_page_agrees(m, out, root)


def test_touched_image_stays_done_and_is_hashed_once(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        assert _run(m, out)[0] == 0
        path = root / "images/hero/5.png"
        later = path.stat().st_mtime_ns + 10**9
        os.utime(path, ns=(later, later))  # `touch`: same bytes, new time
        plan = load_plan(str(m))
        (st,) = job_states(plan.jobs, root, srv.url)
        assert st.state == "done" and st.hashed  # the time differs: the bytes were checked
        before = srv.requests
        code, summary, _ = _run(m, out)
        assert code == 0 and summary["skipped"] == 1 and srv.requests == before
        # the run re-recorded the new time: the next check compares times, hashes nothing
        (st,) = job_states(plan.jobs, root, srv.url)
        assert st.state == "done" and not st.hashed
        (st,) = job_states(plan.jobs, root, srv.url, verify=True)
        assert st.state == "done" and st.hashed


def test_verify_finds_damage_that_kept_size_and_time(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        assert _run(m, out)[0] == 0
        path = root / "images/hero/5.png"
        st = path.stat()
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the time put back as it was
        assert [s for s, _ in status_states(m, out).values()] == ["done"]  # cheap check
        assert [s for s, _ in status_states(m, out, "--verify").values()] == ["pending"]
        before = srv.requests
        assert _run(m, out)[1]["skipped"] == 1 and srv.requests == before
        code, summary, _ = _run(m, out, "--verify")
        assert code == 0 and summary["succeeded"] == 1 and srv.requests == before + 1


def test_records_without_the_new_fields_still_load(tmp_path, monkeypatch):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        assert _run(m, out)[0] == 0
        lines = [json.loads(x) for x in (root / RESULTS).read_text().splitlines()]
        assert all(isinstance(r["mtime_ns"], int) for r in lines)
        for r in lines:
            del r["mtime_ns"]
        (root / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in lines))
        assert [s for s, _ in status_states(m, out).values()] == ["done"]  # by its hash
        before = srv.requests
        assert _run(m, out)[1]["skipped"] == 1 and srv.requests == before
        (st,) = job_states(load_plan(str(m)).jobs, root, srv.url)
        assert st.state == "done" and not st.hashed  # the run recorded its time


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_missing_or_shorter_image_is_pending_without_hashing(tmp_path, monkeypatch, damage):
    out, root = tmp_path / "out", tmp_path / "out" / "base"
    m = _manifest(tmp_path / "m.yaml", "a knight")
    with switchable_server(monkeypatch) as srv:
        assert _run(m, out)[0] == 0
        path = root / "images/hero/5.png"
        if damage == "delete":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:-10])
        (st,) = job_states(load_plan(str(m)).jobs, root, srv.url)
        assert st.state == "pending" and not st.hashed


# -- merge judges by the same rule ------------------------------------------------------------

def test_merge_takes_only_what_is_done_in_a_source_and_pages_agree(tmp_path, monkeypatch):
    m = _manifest(tmp_path / "m.yaml", "a knight", seeds="[5, 6, 7]")
    with switchable_server(monkeypatch) as srv:
        for k in (1, 2):
            assert _run(m, tmp_path / f"s{k}", "--shard", f"{k}/2", "--no-post")[0] == 0
        done = {k: {p.name for p in (tmp_path / f"s{k}/base/images/hero").iterdir()}
                for k in (1, 2)}
        # in shard 1, one job's path now holds another prompt's image (same name, same path)
        lost = min(done[1])  # e.g. "5.png"
        wizard = _manifest(tmp_path / "w.yaml", "a wizard", seeds=f"[{lost.removesuffix('.png')}]")
        assert _run(wizard, tmp_path / "s1", "--no-post")[0] == 0
        code, _, err = cli("merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out",
                           str(tmp_path / "merged"), "--manifest", str(m))
        assert code == 1 and "in no shard's outputs" in err
        merged = tmp_path / "merged" / "base"
        states = {st.job.path: st for st in job_states(load_plan(str(m)).jobs, merged, srv.url)}
        assert states[f"hero/{lost}"].state == "pending"
        assert sum(st.state == "done" for st in states.values()) == 2
        assert not any(st.hashed for st in states.values())  # merged records carry the mtime
        assert_page_agrees(m, tmp_path / "merged", merged)
        assert not (merged / "images" / "hero" / lost).exists()

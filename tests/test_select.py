"""Subsets of a plan: `--only PATTERN` and `--first-seeds N`, in planning/select.py, and the
commands that take them (run, plan, status, sheet, review)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import MANIFEST

from imagebatch.assets.review import Review
from imagebatch.cli import main
from imagebatch.errors import UsageError
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.select import ALL, Selection, narrow, narrow_all, select_jobs
from imagebatch.storage import picks


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(MANIFEST)
    return path


def _paths(jobs) -> list[str]:
    return [j.path for j in jobs]


def test_only_matches_ids_and_paths_by_glob(manifest):
    plan = load_plan(str(manifest))
    assert _paths(select_jobs(plan.jobs, Selection(only=("boat",)))) == \
        ["boat/5.png", "boat/6.png"]
    assert _paths(select_jobs(plan.jobs, Selection(only=("fox/ink/*",)))) == \
        ["fox/ink/1.png", "fox/ink/2.png", "fox/ink/3.png"]
    # repeated: any pattern; in plan order whatever the order of the patterns
    both = select_jobs(plan.jobs, Selection(only=("boat/6.png", "f?x")))
    assert _paths(both) == [j.path for j in plan.jobs if j.id == "fox"] + ["boat/6.png"]
    assert select_jobs(plan.jobs, Selection(only=("FOX",))) == ()  # case sensitive


def test_first_seeds_are_per_variant_in_plan_order(manifest):
    plan = load_plan(str(manifest))
    one = select_jobs(plan.jobs, Selection(first_seeds=1))
    assert _paths(one) == ["fox/ink/1.png", "fox/clay/1.png", "boat/5.png"]
    two = select_jobs(plan.jobs, Selection(first_seeds=2, only=("fox",)))
    assert _paths(two) == ["fox/ink/1.png", "fox/ink/2.png", "fox/clay/1.png",
                           "fox/clay/2.png"]
    assert len(select_jobs(plan.jobs, Selection(first_seeds=99))) == len(plan.jobs)


def test_a_selection_keeps_the_jobs_as_they_are(manifest):
    plan = load_plan(str(manifest))
    subset = narrow(plan, Selection(first_seeds=1))
    assert set(subset.jobs) <= set(plan.jobs)  # same keys, paths and bodies
    assert subset.total == plan.total and subset.name == plan.name


def test_the_shard_is_taken_after_the_selection(manifest):
    plan = load_plan(str(manifest))
    selection = Selection(first_seeds=1)
    wanted = set(select_jobs(plan.jobs, selection))
    shards = [narrow(plan, selection, (k, 3)) for k in (1, 2, 3)]
    assert set().union(*(s.jobs for s in shards)) == wanted
    assert sum(len(s.jobs) for s in shards) == len(wanted)
    assert all(s.shard == (k, 3) for k, s in enumerate(shards, 1))
    with pytest.raises(ValueError, match="whole plan"):
        narrow(shards[0], selection)


def test_a_pattern_that_matches_nothing_names_what_it_could_have_meant(manifest):
    plan = load_plan(str(manifest))
    with pytest.raises(UsageError, match=r"--only 'foxx' matches no job.*did you mean fox\?"):
        narrow_all([plan], Selection(only=("boat", "foxx")))
    with pytest.raises(UsageError, match=r"did you mean fox/ink/1\.png"):
        narrow_all([plan], Selection(only=("fox/inc/1.png",)))
    with pytest.raises(UsageError, match="the job ids are boat, fox"):
        narrow_all([plan], Selection(only=("zzzzzzzz",)))
    assert narrow_all([plan], ALL) == [plan]


# -- through the command line -------------------------------------------------------------------

def test_run_a_preview_then_the_rest_pays_nothing_twice(manifest, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["run", str(manifest), "--out", str(out), "--first-seeds", "1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["planned"], first["succeeded"], first["image_requests"]) == (3, 3, 3)
    assert first["selection"] == {"only": [], "first_seeds": 1, "of": 8}
    made = sorted(str(p.relative_to(out / "sweep/images"))
                  for p in (out / "sweep/images").rglob("*.png"))
    assert made == ["boat/5.png", "fox/clay/1.png", "fox/ink/1.png"]
    # the index shows the whole plan, not only the preview
    assert (out / "sweep/index.html").read_text().count("fox/ink/3.png") >= 1
    assert main(["run", str(manifest), "--out", str(out), "--json"]) == 0
    rest = json.loads(capsys.readouterr().out)
    assert (rest["skipped"], rest["succeeded"], rest["image_requests"]) == (3, 5, 5)
    assert rest["selection"] is None


def test_run_only_with_a_shard(manifest, tmp_path, capsys):
    out = tmp_path / "outputs"
    sent = 0
    for k in (1, 2):
        assert main(["run", str(manifest), "--out", str(out), "--only", "fox", "--shard",
                     f"{k}/2", "--no-post", "--json"]) == 0
        sent += json.loads(capsys.readouterr().out)["image_requests"]
    assert sent == 6
    assert main(["status", str(manifest), "--out", str(out), "--only", "fox", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["planned"], doc["done"], doc["pending"]) == (6, 6, 0)
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 2  # the boats


@pytest.mark.parametrize("command", ["run", "plan", "status", "sheet"])
def test_a_pattern_matching_nothing_exits_2_and_sends_nothing(manifest, tmp_path, capsys,
                                                              command):
    out = tmp_path / "outputs"
    if command == "sheet":
        assert main(["run", str(manifest), "--out", str(out), "--only", "boat/5.png",
                     "--no-post"]) == 0
        capsys.readouterr()
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main([command, str(manifest), "--out", str(out), "--only", "bot"]) == 2
    err = capsys.readouterr().err
    assert "--only 'bot' matches no job id or image path; did you mean boat?" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_first_seeds_zero_is_refused(manifest, capsys):
    assert main(["run", str(manifest), "--first-seeds", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_plan_and_sheet_take_the_selection(manifest, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["plan", str(manifest), "--only", "fox/clay/*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == ["fox/clay/1.png", "fox/clay/2.png", "fox/clay/3.png"]
    assert main(["run", str(manifest), "--out", str(out), "--no-post"]) == 0
    capsys.readouterr()
    # a picks file naming an image outside the subset is no error for a subset's sheet
    picks_at = manifest.with_name("sweep.picks.json")
    plan = load_plan(str(manifest))
    picks.update_picks(picks_at, plan, {"boat/6.png": ("pick", None)})
    assert main(["sheet", str(manifest), "--out", str(out), "--first-seeds", "1"]) == 0
    said = capsys.readouterr().out
    assert "3 thumbnails made" in said


def test_review_shows_only_the_selected_jobs(manifest, tmp_path):
    plan = load_plan(str(manifest))
    shown = narrow(plan, Selection(only=("boat",)))
    review = Review(plan=plan, root=tmp_path / "outputs/sweep",
                    picks_file=tmp_path / "sweep.picks.json", manifest=str(manifest),
                    shown=shown)
    items = review.items(review.load())
    assert [i["path"] for i in items] == ["boat/5.png", "boat/6.png"]
    assert set(review.jobs) == {j.path for j in plan.jobs}  # picks stay the whole plan's

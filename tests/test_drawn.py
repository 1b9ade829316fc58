"""Drawn values: matrix and zip axes from a list or a file, all of them or N drawn."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from imagebatch.errors import ManifestError, Problem
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import canonical_json

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def problems_of(path: str) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    return info.value.problems


def listing(path: str) -> str:
    """A plan as one text: every job's path and body, in order."""
    return "\n".join(f"{j.path} {j.key} {j.body}" for j in load_plan(path).jobs)


ANIMALS = "# animals, one a line\nfox\n\nowl\n  heron  \n# not this one\nbadger\nlynx\notter\n"


def test_values_from_a_file_draw_n_stable_and_usable_twice(tmp_path: Path) -> None:
    (tmp_path / "animals.txt").write_text(ANIMALS, encoding="utf-8")
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: zoo
            prompt: "a {animal} beside another {animal}"
            matrix:
              animal: {from: animals.txt, draw: 3, seed: 7}
            seeds: [1]
    """)
    plan = load_plan(path)
    drawn = [dict(j.vars)["animal"] for j in plan.jobs]
    assert len(drawn) == 3 and len(set(drawn)) == 3
    assert set(drawn) <= {"fox", "owl", "heron", "badger", "lynx", "otter"}
    # kept in the file's order; the value fills both placeholders
    order = ["fox", "owl", "heron", "badger", "lynx", "otter"]
    assert drawn == sorted(drawn, key=order.index)
    for job in plan.jobs:
        animal = dict(job.vars)["animal"]
        assert job.request["prompt"] == f"a {animal} beside another {animal}"
    # byte-identical plans across runs (and a fresh process would read the same: no state)
    assert listing(path) == listing(path)


def test_draw_pinned_literally(tmp_path: Path) -> None:
    """The draw is SHA-256 of seed and value: pinned so no refactor moves it silently."""
    (tmp_path / "animals.txt").write_text(ANIMALS, encoding="utf-8")
    path = write(tmp_path, """
        version: 1
        name: zoo
        jobs:
          - id: zoo
            prompt: "a {mood} {animal}"
            matrix:
              animal: {from: animals.txt, draw: 3, seed: 7}
              mood: {values: [calm, wild, sleepy, proud], draw: 2}
            seeds: [1]
    """)
    plan = load_plan(path)
    assert [j.path for j in plan.jobs] == PINNED_DRAW


PINNED_DRAW = ["zoo/owl-sleepy/1.png", "zoo/owl-proud/1.png", "zoo/heron-sleepy/1.png",
               "zoo/heron-proud/1.png", "zoo/badger-sleepy/1.png", "zoo/badger-proud/1.png"]


def test_editing_the_file_changes_only_the_jobs_whose_values_changed(tmp_path: Path) -> None:
    values = [f"animal{i}" for i in range(40)]
    (tmp_path / "a.txt").write_text("\n".join(values) + "\n", encoding="utf-8")
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: zoo
            prompt: "a {animal}"
            matrix:
              animal: {from: a.txt, draw: 10}
            seeds: [1, 2]
    """)
    before = {j.key: dict(j.vars)["animal"] for j in load_plan(path).jobs}
    drawn = sorted(set(before.values()))
    # replace one drawn value with another line; add one more line at the top
    edited = ["zebra", *("okapi" if v == drawn[0] else v for v in values)]
    (tmp_path / "a.txt").write_text("\n".join(edited) + "\n", encoding="utf-8")
    after = {j.key: dict(j.vars)["animal"] for j in load_plan(path).jobs}
    gone = {v for k, v in before.items() if k not in after}
    new = {v for k, v in after.items() if k not in before}
    assert drawn[0] in gone
    # at most the edited line and the added ones changed: every other job kept its key
    assert gone <= {drawn[0], *drawn}  # what left was drawn
    assert len(set(before.values()) - set(after.values())) <= 2
    assert new <= {"zebra", "okapi"} | set(values)
    assert len(before) == len(after) == 20
    kept = set(before) & set(after)
    assert len(kept) >= 16, (gone, new)


def test_all_values_of_a_file_and_a_zip_of_drawn_axes(tmp_path: Path) -> None:
    (tmp_path / "subjects.txt").write_text("knight\nwizard\nthief\n", encoding="utf-8")
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: hero
            prompt: "{subject}, {mood} lighting"
            zip:
              subject: {from: subjects.txt}
              mood: {values: [golden, eerie, noir, pale], draw: 3, seed: 5}
            seeds: [1]
    """)
    plan = load_plan(path)
    assert [dict(j.vars)["subject"] for j in plan.jobs] == ["knight", "wizard", "thief"]
    assert len({dict(j.vars)["mood"] for j in plan.jobs}) == 3


def test_a_field_axis_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "ratios.txt").write_text("16:9\n1:1\n", encoding="utf-8")
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: a
            prompt: "a lighthouse"
            matrix:
              aspect_ratio: {from: ratios.txt}
            seeds: [1]
    """)
    assert [j.request["aspect_ratio"] for j in load_plan(path).jobs] == ["16:9", "1:1"]


def test_errors_at_file_line_column(tmp_path: Path) -> None:
    (tmp_path / "dup.txt").write_text("fox\nowl\n  fox\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n", encoding="utf-8")
    (tmp_path / "few.txt").write_text("fox\nowl\n", encoding="utf-8")
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: a
            prompt: "a {x}"
            matrix:
              x: {from: missing.txt}
          - id: b
            prompt: "a {x}"
            matrix:
              x: {from: dup.txt}
          - id: c
            prompt: "a {x}"
            matrix:
              x: {from: empty.txt}
          - id: d
            prompt: "a {x}"
            matrix:
              x: {from: few.txt, draw: 3}
          - id: e
            prompt: "a {x}"
            matrix:
              x: {values: [p, q], draw: 5}
    """)
    found = {(Path(p.file).name, p.line, p.column, p.path): p.message
             for p in problems_of(path)}
    assert set(found) == {
        ("m.yaml", 6, 17, "jobs[0].matrix.x.from"),
        ("dup.txt", 3, 3, "jobs[1].matrix.x.from"),
        ("m.yaml", 14, 17, "jobs[2].matrix.x.from"),
        ("m.yaml", 18, 32, "jobs[3].matrix.x.draw"),
        ("m.yaml", 22, 33, "jobs[4].matrix.x.draw"),
    }, found
    assert "missing.txt" in found[("m.yaml", 6, 17, "jobs[0].matrix.x.from")]
    assert "already on line 1" in found[("dup.txt", 3, 3, "jobs[1].matrix.x.from")]
    assert "no values" in found[("m.yaml", 14, 17, "jobs[2].matrix.x.from")]
    assert "only 2" in found[("m.yaml", 18, 32, "jobs[3].matrix.x.draw")]


def test_keys_of_the_example_manifests_are_unchanged() -> None:
    """Literal keys from before drawn values existed: no existing plan moves."""
    pinned = {
        "manifests/matrix.yaml": ("styles/1x1/pixel-art-dragon.png",
                                  "8df499064e5b4d1f9096bd159516f55dfdf546a5aba3d6098ccc776f80eaebf1"),
        "manifests/seed-sweep.yaml": ("lighthouse/1000.png",
                                      "b04b6bccde6d4afe067c3eaeeef1d4158aa293659200490f2354d159cd24f5e9"),
        "manifests/example.yaml": ("mushrooms/123.png",
                                   "c46c7cc1d251f1639d5244df586b2c8650867e378b12b4b04bf76b72e9420772"),
    }
    for manifest, (path, key) in pinned.items():
        jobs = {j.path: j for j in load_plan(str(ROOT / manifest)).jobs}
        assert jobs[path].key == key
        assert canonical_json(jobs[path].request) == jobs[path].body

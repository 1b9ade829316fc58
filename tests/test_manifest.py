"""Loading and validating manifests: locations, all errors at once, YAML traps, caps, bombs."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from imagebatch.errors import ManifestError, Problem, UsageError
from imagebatch.planning.manifest import MAX_NODES, load_manifest, load_plan

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    """Write a manifest (dedented) and return its path as text."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def problems_of(path: str, **kwargs: object) -> list[Problem]:
    """Every problem load_plan reports for a file (it must report at least one)."""
    with pytest.raises(ManifestError) as info:
        load_plan(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.problems, "a ManifestError must carry its problems"
    return info.value.problems


def where(problems: list[Problem]) -> set[tuple[int, int, str]]:
    """(line, column, field path) of each problem."""
    return {(p.line, p.column, p.path) for p in problems}


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# --------------------------------------------------------------------------------------
# error format and locations


def test_error_names_file_line_column_path_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: city
            prompt: "A city"
            matrix:
              aspect_ratio: ["16:9", "4:3"]
    """)
    p = only(problems_of(path))
    assert (p.file, p.line, p.column) == (path, 6, 30)
    assert p.path == "jobs[0].matrix.aspect_ratio[1]"
    # the ratios from wide to tall, and the nearest shape named
    assert p.message == ("'4:3' is not one of 21:9, 16:9, 3:2, 5:4, 1:1, 4:5, 2:3, 9:16, 9:21 "
                         "(the nearest is '5:4')")
    assert str(p) == f"{path}:6:30: jobs[0].matrix.aspect_ratio[1]: {p.message}"


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defualts:
          aspect_ratio: "1:1"
        jobs:
          - id: a
            prompt: "one"
            seeds: 0
          - id: b
            promt: "two"
            output_format: gif
          - id: a
            prompt: "three"
            size: 800x600
    """)
    got = where(problems_of(path))
    assert got == {
        (2, 1, "defualts"),              # unknown key
        (7, 12, "jobs[0].seeds"),        # seed 0
        (9, 5, "jobs[1].promt"),         # unknown key
        (10, 20, "jobs[1].output_format"),  # bad enum
        (8, 5, "jobs[1]"),               # so it has no prompt
        (11, 9, "jobs[2].id"),           # duplicate id
        (13, 11, "jobs[2].size"),        # bad enum
    }


@pytest.mark.parametrize(("text", "loc", "field", "suggestion"), [
    ("version: 1\ndefualts: {}\njobs: []\n", (2, 1), "defualts", "'defaults'"),
    ("version: 1\njobs:\n  - id: a\n    promt: x\n", (4, 5), "jobs[0].promt", "'prompt'"),
    ("version: 1\njobs:\n  - id: a\n    prompt: x\n    seed: 1\n    aspect: '1:1'\n",
     (6, 5), "jobs[0].aspect", "'aspect_ratio'"),
    ("version: 1\noutput:\n  thumbnial: 64\njobs:\n  - {id: a, prompt: x}\n",
     (3, 3), "output.thumbnial", "'thumbnail'"),
    ("version: 1\noutput:\n  sheet: {per_pgae: 3}\njobs:\n  - {id: a, prompt: x}\n",
     (3, 11), "output.sheet.per_pgae", "'per_page'"),
    ("version: 1\njobs:\n  - id: a\n    prompt: x\n    seeds: {start: 1, cout: 3}\n",
     (5, 23), "jobs[0].seeds.cout", "'count'"),
])
def test_unknown_keys_are_refused_with_did_you_mean(
        tmp_path: Path, text: str, loc: tuple[int, int], field: str, suggestion: str) -> None:
    problems = problems_of(write(tmp_path, text))
    hit = [p for p in problems if p.path == field]
    assert len(hit) == 1, [str(p) for p in problems]
    assert (hit[0].line, hit[0].column) == loc
    assert f"unknown key '{field.rsplit('.', 1)[-1]}'" in hit[0].message
    assert f"did you mean {suggestion}?" in hit[0].message


def test_unknown_key_far_from_any_lists_the_allowed_ones(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, "version: 1\nzzzz: 1\njobs:\n  - {id: a, prompt: x}\n")))
    assert (p.line, p.column, p.path) == (2, 1, "zzzz")
    assert "did you mean" not in p.message
    assert "allowed: version, name, model, defaults, seeds, output, jobs" in p.message


@pytest.mark.parametrize(("text", "loc", "field", "first_line"), [
    ("version: 1\nversion: 1\njobs:\n  - {id: a, prompt: x}\n", (2, 1), "version", 1),
    ("version: 1\njobs:\n  - id: a\n    prompt: x\n    prompt: y\n", (5, 5), "jobs[0].prompt", 4),
    (("version: 1\ndefaults:\n  output_format: png\n  output_format: jpeg\njobs:\n"
      "  - {id: a, prompt: x}\n"), (4, 3), "defaults.output_format", 3),
    ("version: 1\njobs:\n  - id: a\n    prompt: '{s}'\n    matrix:\n      s: [x]\n      s: [y]\n",
     (7, 7), "jobs[0].matrix.s", 6),
])
def test_duplicate_keys_are_refused(tmp_path: Path, text: str, loc: tuple[int, int],
                                    field: str, first_line: int) -> None:
    problems = problems_of(write(tmp_path, text))
    hit = [p for p in problems if p.path == field and "duplicate key" in p.message]
    assert len(hit) == 1, [str(p) for p in problems]
    assert (hit[0].line, hit[0].column) == loc
    assert f"first set on line {first_line}" in hit[0].message


# --------------------------------------------------------------------------------------
# YAML 1.1 traps: what the user wrote is what is sent


def test_pyyaml_really_misreads_these_values() -> None:
    """The traps are real: plain PyYAML turns 16:9 into 969 and yes into True."""
    assert yaml.safe_load("a: 16:9\nb: yes\nc: off\n") == {"a": 969, "b": True, "c": False}


def test_unquoted_ratio_and_yes_are_taken_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defaults:
          negative_prompt: off
        jobs:
          - id: a
            prompt: yes
            aspect_ratio: 16:9
            seeds: [1]
          - id: b
            prompt: "{answer} at {time}"
            matrix:
              answer: [no, on, 0x1F, 1e3, ~x]
              time: [12:30]
              aspect_ratio: [9:16]
            seeds: [1]
    """)
    plan = load_plan(path)
    first = json.loads(plan.jobs[0].body)
    assert first["prompt"] == "yes"
    assert first["aspect_ratio"] == "16:9"
    assert first["negative_prompt"] == "off"
    assert '"aspect_ratio":"16:9"' in plan.jobs[0].body
    assert '"prompt":"yes"' in plan.jobs[0].body
    prompts = [j.request["prompt"] for j in plan.jobs[1:]]
    assert prompts == ["no at 12:30", "on at 12:30", "0x1F at 12:30", "1e3 at 12:30",
                       "~x at 12:30"]
    assert {j.request["aspect_ratio"] for j in plan.jobs[1:]} == {"9:16"}


def test_an_empty_prompt_or_null_is_refused_not_sent_as_none(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: null}\n  - {id: b, prompt: }\n")
    got = where(problems_of(path))
    assert got == {(3, 21, "jobs[0].prompt"), (4, 20, "jobs[1].prompt")}


@pytest.mark.parametrize(("value", "message"), [
    ('"1"', "is not supported"), ("2", "is not supported"), ("1.0", "is not supported"),
])
def test_version_must_be_the_integer_one(tmp_path: Path, value: str, message: str) -> None:
    p = only(problems_of(write(tmp_path, f"version: {value}\njobs:\n  - {{id: a, prompt: x}}\n")))
    assert (p.line, p.column, p.path) == (1, 10, "version")
    assert message in p.message


def test_missing_version_and_jobs(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "name: x\n"))
    assert {p.path for p in problems} == {"version", "jobs"}
    assert all((p.line, p.column) == (1, 1) for p in problems)


# --------------------------------------------------------------------------------------
# names, model, defaults


def test_name_defaults_to_the_stem_and_model_to_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: x, seeds: 1}\n",
                 name="my-set.yaml")
    m = load_manifest(path, default_model="other-model")
    assert (m.name, m.model) == ("my-set", "other-model")
    assert json.loads(load_plan(path, default_model="other-model").jobs[0].body)["model"] == \
        "other-model"


def test_a_stem_that_is_no_valid_name_asks_for_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: x}\n", name="My Set.yaml")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (1, 1, "name")
    assert "add a `name:`" in p.message


@pytest.mark.parametrize("name", ["Upper", "../up", "-dash", "a/b", "x" * 101])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    p = only(problems_of(write(tmp_path, f"version: 1\nname: {json.dumps(name)}\n"
                                         "jobs:\n  - {id: a, prompt: x}\n")))
    assert (p.line, p.column, p.path) == (2, 7, "name")


def test_job_fields_override_defaults_and_size_replaces_ratio(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defaults:
          aspect_ratio: "1:1"
          output_format: jpeg
          negative_prompt: "blurry"
        jobs:
          - {id: a, prompt: x, seeds: 1}
          - {id: b, prompt: x, seeds: 1, size: 1344x768, output_format: png}
    """)
    a, b = (j.request for j in load_plan(path).jobs)
    assert a == {"aspect_ratio": "1:1", "model": "stable-image-ultra", "negative_prompt": "blurry",
                 "output_format": "jpeg", "prompt": "x", "seed": 1}
    assert b == {"size": "1344x768", "model": "stable-image-ultra", "negative_prompt": "blurry",
                 "output_format": "png", "prompt": "x", "seed": 1}


def test_size_and_ratio_that_disagree_are_refused(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, "version: 1\njobs:\n  - id: a\n    prompt: x\n"
                                         "    size: 1344x768\n    aspect_ratio: '1:1'\n")))
    assert (p.line, p.path) == (5, "jobs[0].size")
    assert "16:9" in p.message


@pytest.mark.parametrize(("block", "field", "loc", "said"), [
    ("defaults:\n  aspect_ratio: '4:3'\n", "defaults.aspect_ratio", (3, 17), "is not one of"),
    # a format only Stability makes says which provider the run was planned for, and why
    ("defaults:\n  output_format: webp\n", "defaults.output_format", (3, 18),
     "the heroku provider makes only png, jpeg, and this run sends to it; 'webp' needs the "
     "stability provider (the provider comes from the environment: set "
     "DIFFUSION_PROVIDER=stability"),
    ("defaults:\n  output_format: gif\n", "defaults.output_format", (3, 18), "is not one of"),
    ("defaults:\n  size: 1x1\n", "defaults.size", (3, 9), "is not one of"),
])
def test_bad_enums_in_defaults(tmp_path: Path, block: str, field: str,
                               loc: tuple[int, int], said: str) -> None:
    path = write(tmp_path, f"version: 1\n{block}jobs:\n  - {{id: a, prompt: x}}\n")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (*loc, field)
    assert said in p.message


@pytest.mark.parametrize(("text", "field"), [
    ("version: 1\njobs: {id: a}\n", "jobs"),
    ("version: 1\njobs:\n  - just text\n", "jobs[0]"),
    ("version: 1\njobs:\n  - {id: a, prompt: [x]}\n", "jobs[0].prompt"),
    ("version: 1\njobs:\n  - {id: a, prompt: x, matrix: [a, b]}\n", "jobs[0].matrix"),
    ("version: 1\njobs:\n  - {id: a, prompt: x, matrix: {v: x}}\n", "jobs[0].matrix.v"),
    ("version: 1\njobs:\n  - {id: [a], prompt: x}\n", "jobs[0].id"),
    ("version: 1\noutput: {thumbnail: big}\njobs:\n  - {id: a, prompt: x}\n", "output.thumbnail"),
    ("version: 1\noutput: {thumbnail: 8}\njobs:\n  - {id: a, prompt: x}\n", "output.thumbnail"),
    ("version: 1\noutput: {sheet: {per_page: 0}}\njobs:\n  - {id: a, prompt: x}\n",
     "output.sheet.per_page"),
])
def test_wrong_types_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    problems = problems_of(write(tmp_path, text))
    assert field in {p.path for p in problems}, [str(p) for p in problems]


# --------------------------------------------------------------------------------------
# prompts, placeholders, ids


def test_prompt_over_the_limit_is_refused_where_written(tmp_path: Path) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: {'x' * 10_001}\n")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (4, 13, "jobs[0].prompt")
    assert "10,001 characters" in p.message and "10,000" in p.message


def test_prompt_at_the_limit_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: {'x' * 10_000}\n")
    assert len(load_plan(path).jobs[0].request["prompt"]) == 10_000


def test_prompt_over_the_limit_once_variables_are_filled_in(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        version: 1
        jobs:
          - id: a
            prompt: "{'x' * 9_500}{{v}}"
            matrix:
              v: [short, "{'y' * 600}"]
    """)
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (4, 13, "jobs[0].prompt")
    assert "10,100 characters once variables are filled in" in p.message


def test_unknown_placeholder_in_prompt(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - id: a\n    prompt: 'A {styel} cat'\n"
                           "    matrix:\n      style: [x]\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (4, "jobs[0].prompt")
    assert "'{styel}' is not a variable of this job" in p.message and "{style}" in p.message


def test_literal_braces_are_written_doubled(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: 'a {{b}} c', seeds: 1}\n")
    assert load_plan(path).jobs[0].request["prompt"] == "a {b} c"


@pytest.mark.parametrize("job_id", ["..", ".", "a/b", "a b", "ünï", "x" * 101, "a\\b"])
def test_invalid_ids_are_refused(tmp_path: Path, job_id: str) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: {json.dumps(job_id)}\n    prompt: x\n")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (3, 9, "jobs[0].id")
    assert "is not a valid id" in p.message


def test_output_template_with_unknown_placeholder_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\noutput:\n  path: '{id}/{sed}.{ext}'\n"
                           "jobs:\n  - {id: a, prompt: x}\n")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (3, 9, "output.path")
    assert "did you mean {seed}?" in p.message


@pytest.mark.parametrize(("template", "message"), [
    ("/abs/{seed}.png", "not absolute"),
    ("C:/x/{seed}.png", "not absolute"),
    ("../{seed}.png", "must not climb out"),
    ("a/../../{seed}.png", "must not climb out"),
    ("a\\\\{seed}.png", "not \\"),
    ("{id}:{seed}.png", "may only hold"),
    ("{id}/\u2025/{seed}.png", "may only hold"),
    ("{seed!r}.png", "is not a placeholder"),
])
def test_unsafe_output_templates_are_refused(tmp_path: Path, template: str, message: str) -> None:
    path = write(tmp_path, f'version: 1\noutput:\n  path: "{template}"\n'
                           "jobs:\n  - {id: a, prompt: x}\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (3, "output.path")
    assert message in p.message


# --------------------------------------------------------------------------------------
# seeds: every form, and every way of writing 0


@pytest.mark.parametrize(("seeds", "expected"), [
    ("7", (7,)),
    ("[3, 1, 2]", (3, 1, 2)),
    ("{start: 100, count: 4}", (100, 101, 102, 103)),
    ("{start: 4294967294, count: 2}", (4294967294, 4294967295)),
])
def test_seed_forms(tmp_path: Path, seeds: str, expected: tuple[int, ...]) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    seeds: {seeds}\n")
    assert tuple(j.seed for j in load_plan(path).jobs) == expected
    assert tuple(j.request["seed"] for j in load_plan(path).jobs) == expected


def test_job_seeds_override_top_level_and_defaults_seed(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        seeds: [5, 6]
        jobs:
          - {id: a, prompt: x}
          - {id: b, prompt: x, seeds: 9}
          - {id: c, prompt: x, seed: 8}
    """)
    assert [(j.id, j.seed) for j in load_plan(path).jobs] == \
        [("a", 5), ("a", 6), ("b", 9), ("c", 8)]
    path = write(tmp_path, "version: 1\ndefaults: {seed: 11}\njobs:\n  - {id: a, prompt: x}\n",
                 name="d.yaml")
    assert [j.seed for j in load_plan(path).jobs] == [11]


@pytest.mark.parametrize(("text", "loc", "field"), [
    ("seeds: 0", (5, 12), "jobs[0].seeds"),
    ("seeds: [1, 0]", (5, 16), "jobs[0].seeds[1]"),
    ("seeds: {start: 0, count: 3}", (5, 20), "jobs[0].seeds.start"),
    ("seed: 0", (5, 11), "jobs[0].seeds"),
])
def test_seed_zero_is_refused_pointing_at_random(tmp_path: Path, text: str,
                                                 loc: tuple[int, int], field: str) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    {text}\n")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (*loc, field)
    assert "{random: N}" in p.message and "cannot be reproduced" in p.message


def test_seed_zero_in_defaults_and_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\ndefaults: {seed: 0}\njobs:\n  - {id: a, prompt: x}\n")
    assert "{random: N}" in only(problems_of(path)).message
    path = write(tmp_path, "version: 1\nseeds: [0]\njobs:\n  - {id: a, prompt: x}\n", "t.yaml")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (2, 9, "seeds[0]")
    assert "{random: N}" in p.message


@pytest.mark.parametrize(("seeds", "field", "message"), [
    ("4294967296", "jobs[0].seeds", "out of range"),
    ("-1", "jobs[0].seeds", "out of range"),
    ("1.5", "jobs[0].seeds", "seeds must be a number"),
    ("true", "jobs[0].seeds", "seeds must be a number"),
    ("'12'", "jobs[0].seeds", "seeds must be a number"),
    ("[]", "jobs[0].seeds", "empty list"),
    ("[1, 2, 1]", "jobs[0].seeds[2]", "already"),
    ("[1, x]", "jobs[0].seeds[1]", "whole number"),
    ("{start: 4294967295, count: 2}", "jobs[0].seeds", "over the maximum"),
    ("{start: 5}", "jobs[0].seeds", "needs both start and count"),
    ("{start: 1, count: 0}", "jobs[0].seeds.count", "out of range"),
    ("{random: 0}", "jobs[0].seeds.random", "out of range"),
    ("{random: 2, start: 1}", "jobs[0].seeds", "takes no other keys"),
])
def test_bad_seeds(tmp_path: Path, seeds: str, field: str, message: str) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    seeds: {seeds}\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (5, field)
    assert message in p.message


def test_seed_and_seeds_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: x, seed: 1, seeds: [2]}\n")
    assert "not both" in only(problems_of(path)).message


# --------------------------------------------------------------------------------------
# the job cap, before expansion


def test_cap_counts_axes_and_seeds_before_expanding(tmp_path: Path) -> None:
    # 10 x 10 x 10 values x 10^9 seeds = 10^12 jobs: refused from the sizes alone
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: sweep
            prompt: "{a} {b} {c}"
            matrix:
              a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
              b: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
              c: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
            seeds: {start: 1, count: 1000000000}
    """)
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError) as info:
            load_plan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    p = only(info.value.problems)
    assert (p.line, p.column, p.path) == (3, 3, "jobs")
    assert "1,000,000,000,000 jobs, over the cap of 5,000" in p.message
    assert "--max-jobs" in p.message


def test_random_seeds_count_towards_the_cap_unexpanded(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: x, seeds: {random: 10000000}}\n")
    tracemalloc.start()
    try:
        problems = problems_of(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024
    assert "10,000,000 jobs" in only(problems).message


def test_cap_is_inclusive_and_sums_jobs(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - {id: a, prompt: x, seeds: {start: 1, count: 6}}
          - {id: b, prompt: y, seeds: {start: 1, count: 4}}
    """)
    assert load_plan(path, max_jobs=10).total == 10
    p = only(problems_of(path, max_jobs=9))
    assert "10 jobs, over the cap of 9" in p.message and "jobs[0] 'a' alone makes 6" in p.message


# --------------------------------------------------------------------------------------
# alias bombs


BILLION_LAUGHS = """
version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
jobs:
  - id: x
    prompt: "{v}"
    matrix:
      v: *i
    seeds: *i
  - *i
"""


def _kib(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s*(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def _with_peak_memory(call: Callable[[], T]) -> tuple[T, int]:
    """call() and how far this process's memory rose above where it was while it ran.

    On Linux, the growth of the resident set's high-water mark (reset to the current size
    first, /proc/self/clear_refs): every allocation counts, Python's and the C libraries',
    at the cost of the call alone. Elsewhere tracemalloc's peak, which traces Python's
    allocations only and makes the merge bomb's 300,000 checked values ten times slower."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        tracemalloc.start()
        try:
            return call(), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    before = _kib("VmRSS")
    result = call()
    return result, _kib("VmHWM") - before


def merge_bomb(levels: int = 40) -> str:
    """Each level merges the one below twice: 2**levels visits if merges were followed naively."""
    lines = ["version: 1", "defaults: &m0 {prompt: p}"]
    lines += [f"k{i}: &m{i}\n  <<: [*m{i - 1}, *m{i - 1}]" for i in range(1, levels)]
    lines += ["jobs:", "  - id: a", f"    <<: *m{levels - 1}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [BILLION_LAUGHS, merge_bomb()], ids=["laughs", "merge"])
def test_alias_bombs_are_refused_in_little_memory(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    problems, peak = _with_peak_memory(lambda: problems_of(path))
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert len(problems) < 1000
    assert all(p.file == path for p in problems)


def test_merge_bomb_is_named_as_such(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, merge_bomb())))
    assert (p.line, p.column) == (1, 1)
    assert f"more than {MAX_NODES:,} values" in p.message


def test_alias_bomb_via_the_cli_exits_2_promptly(tmp_path: Path) -> None:
    path = write(tmp_path, merge_bomb(60))
    # the timeout only guards against a hang; it is far above what this takes
    res = subprocess.run([sys.executable, "-m", "imagebatch", "validate", path], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2
    assert f"{path}:1:1: the document expands to more than" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_plain_merge_key_works(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        name: merged
        base: &base {prompt: "shared", aspect_ratio: "3:2"}
        jobs:
          - {<<: *base, id: a, seeds: 1}
          - {<<: *base, id: b, seeds: 1, aspect_ratio: "2:3"}
    """)
    # a top-level anchor holder is still an unknown key: refused, with its place
    p = only(problems_of(path))
    assert (p.line, p.path) == (3, "base")
    path = write(tmp_path, """
        version: 1
        jobs:
          - &a {id: a, prompt: "shared", aspect_ratio: "3:2", seeds: 1}
          - {<<: *a, id: b, aspect_ratio: "2:3"}
    """, name="merged.yaml")
    a, b = load_plan(path).jobs
    assert (a.request["prompt"], a.request["aspect_ratio"]) == ("shared", "3:2")
    assert (b.request["prompt"], b.request["aspect_ratio"], b.seed) == ("shared", "2:3", 1)


# --------------------------------------------------------------------------------------
# files that are not manifests


def test_empty_and_comment_only_files(tmp_path: Path) -> None:
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing\n# here\n")):
        p = only(problems_of(write(tmp_path, text, name=name)))
        assert (p.line, p.column) == (1, 1)
        assert "the file is empty" in p.message


def test_a_list_at_top_level(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, "- id: a\n  prompt: x\n")))
    assert (p.line, p.column, p.path) == (1, 1, "")
    assert "must be a mapping" in p.message and "a list" in p.message


def test_two_documents(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - {id: a, prompt: x}\n---\nversion: 1\n")
    p = only(problems_of(path))
    assert (p.line, p.column) == (4, 1)
    assert "only one YAML document" in p.message


def test_syntax_error_has_the_parser_location(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs:\n  - id: a\n    prompt: \"unterminated\n")
    p = only(problems_of(path))
    assert p.file == path and p.line >= 4
    assert p.message.startswith("YAML syntax error")


def test_non_utf8_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\njobs:\n  - id: a\n    prompt: caf\xe9\n")
    p = only(problems_of(str(path)))
    assert (p.line, p.column) == (4, 16)
    assert "not UTF-8" in p.message


def test_a_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\njobs:\n  - {id: a, prompt: x, seeds: 1}\n")
    assert load_plan(str(path)).total == 1


def test_a_folder_and_a_missing_file_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a folder"):
        load_plan(str(tmp_path))
    with pytest.raises(UsageError, match="no such manifest file"):
        load_plan(str(tmp_path / "nope.yaml"))


def test_surrogate_pair_escapes_are_joined_and_lone_ones_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: 1\njobs:\n  - {id: a, prompt: "smile \\ud83d\\ude00", '
                           'seeds: 1}\n')
    job = load_plan(path).jobs[0]
    assert job.request["prompt"] == "smile \U0001F600"
    assert job.key == hashlib.sha256(job.body.encode("utf-8")).hexdigest()
    path = write(tmp_path, 'version: 1\njobs:\n  - id: a\n    prompt: "half \\ud83d"\n'
                           '    matrix: {v: ["\\udc00"]}\n', name="lone.yaml")
    problems = problems_of(path)
    assert where(problems) == {(4, 13, "jobs[0].prompt"), (5, 18, "jobs[0].matrix.v[0]")}
    assert all("unpaired surrogate" in p.message for p in problems)


# --------------------------------------------------------------------------------------
# template variables every job must have


@pytest.mark.parametrize(("output", "field"), [
    ('{path: "{style}/{seed}.{ext}"}', "output.path"),
    ('{sheet: {label: "{style} #{seed}"}}', "output.sheet.label"),
])
def test_an_output_variable_that_one_job_lacks_is_refused(tmp_path: Path, output: str,
                                                          field: str) -> None:
    path = write(tmp_path, f"""
        version: 1
        output: {output}
        jobs:
          - id: a
            prompt: "a {{style}} fox"
            matrix: {{style: [ink, oil]}}
            seeds: 1
          - {{id: b, prompt: "a plain fox", seeds: 1}}
    """)
    p = only(problems_of(path))
    assert (p.line, p.path) == (2, field)
    assert "job 'b' (jobs[1]) has no {style}" in p.message


def test_an_output_variable_every_job_has_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        output: {path: "{style}/{id}-{seed}.{ext}", sheet: {label: "{style}"}}
        jobs:
          - {id: a, prompt: "a {style} fox", matrix: {style: [ink]}, seeds: 1}
          - {id: b, prompt: "a {style} owl", zip: {style: [oil]}, seeds: 1}
    """)
    assert [j.path for j in load_plan(path).jobs] == ["ink/a-1.png", "oil/b-1.png"]


# --------------------------------------------------------------------------------------
# documents that would exhaust the stack or the memory


def test_deep_nesting_is_refused_where_it_gets_too_deep(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\njobs: " + "[" * 500 + "]" * 500 + "\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (2, "")
    assert "nested more than" in p.message


def test_a_long_chain_of_merges_is_refused_not_a_crash(tmp_path: Path) -> None:
    lines = ["version: 1", "defaults: &m0 {prompt: p}"]
    lines += [f"k{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, 1500)]
    lines += ["jobs:", "  - {id: a, <<: *m1499}"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    problems = problems_of(path)
    assert any("merge keys nested more than" in p.message for p in problems), problems


def test_a_mapping_that_merges_itself_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defaults: &d
          <<: *d
          prompt: x
        jobs:
          - {id: a, seeds: 1}
    """)
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (3, 3, "defaults")
    assert "merges itself" in p.message


@pytest.mark.parametrize(("text", "loc", "field"), [
    ('seeds: !!int ""', (5, 12), "jobs[0].seeds"),
    ('seeds: !!int "_"', (5, 12), "jobs[0].seeds"),
    ('seeds: [!!int "-"]', (5, 13), "jobs[0].seeds[0]"),
    ('seeds: {random: !!int "0x"}', (5, 21), "jobs[0].seeds.random"),
])
def test_an_int_tag_on_no_digits_is_refused(tmp_path: Path, text: str, loc: tuple[int, int],
                                            field: str) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    {text}\n")
    p = only(problems_of(path))
    assert (p.line, p.column, p.path) == (*loc, field)
    assert "is not a whole number" in p.message


def test_an_int_tag_on_no_digits_in_output_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: 1\noutput: {thumbnail: !!int "-"}\n'
                           "jobs:\n  - {id: a, prompt: x}\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (2, "output.thumbnail")
    assert "is not a whole number" in p.message


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x7f", "\ufffe"])
def test_a_control_character_is_located_in_one_line(tmp_path: Path, char: str) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - {{id: a, prompt: x{char}, seeds: 1}}\n")
    p = only(problems_of(path))
    assert (p.line, p.column) == (3, 22)
    assert f"U+{ord(char):04X}" in p.message and "\n" not in p.message
    assert "position" not in p.message


def test_a_control_character_after_crlf_lines_is_located(tmp_path: Path) -> None:
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"version: 1\r\njobs:\r\n  - {id: a, prompt: \x1b, seeds: 1}\r\n")
    p = only(problems_of(str(path)))
    assert (p.line, p.column) == (3, 21)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_is_refused_after_the_cap(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        p = only(problems_of("/dev/zero"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (p.file, p.line, p.column) == ("/dev/zero", 1, 1)
    assert "more than 8,388,608 bytes" in p.message
    assert peak < 40 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_plain_document_over_the_value_cap_does_not_blame_aliases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imagebatch.planning.manifest
    monkeypatch.setattr(imagebatch.planning.manifest, "MAX_NODES", 1000)
    seeds = ", ".join(str(i) for i in range(1, 1002))
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    seeds: [{seeds}]\n")
    p = only(problems_of(path, max_jobs=5000))
    assert p.line == 5
    assert "more than 1,000 values" in p.message
    assert "alias" not in p.message


def test_an_alias_bomb_still_blames_aliases(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, merge_bomb())))
    assert f"the document expands to more than {MAX_NODES:,} values" in p.message
    assert "alias" in p.message


# --------------------------------------------------------------------------------------
# YAML 1.1 integer traps: leading zeros (octal) and colons (base 60)


@pytest.mark.parametrize(("text", "field", "words"), [
    ("seeds: [001, 2]", "jobs[0].seeds[0]", ("leading zero", "octal", "(1)", "write 1")),
    ("seeds: [1, 010]", "jobs[0].seeds[1]", ("octal", "(8)", "write 10")),
    ("seeds: [1:30]", "jobs[0].seeds[0]", ("base 60", "(90)")),
    ("seeds: 010", "jobs[0].seeds", ("octal", "(8)")),
    ("seeds: 09", "jobs[0].seeds", ("leading zero", "write 9")),
    ("seeds: [08]", "jobs[0].seeds[0]", ("leading zero", "write 8")),
    ('seeds: !!int "010"', "jobs[0].seeds", ("octal", "(8)")),
    ("seeds: {start: 0100, count: 2}", "jobs[0].seeds.start", ("octal", "(64)")),
    ("seeds: {start: 100, count: 1:0}", "jobs[0].seeds.count", ("base 60", "(60)")),
    ("seeds: {random: 07}", "jobs[0].seeds.random", ("octal", "(7)")),
])
def test_yaml11_octal_and_base60_integers_are_refused(
        tmp_path: Path, text: str, field: str, words: tuple[str, ...]) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    {text}\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (5, field)
    assert all(w in p.message for w in words), p.message


@pytest.mark.parametrize(("output", "field"), [
    ("{thumbnail: 0256}", "output.thumbnail"),
    ("{sheet: {per_page: 1:40}}", "output.sheet.per_page"),
])
def test_yaml11_integer_traps_in_output_are_refused(tmp_path: Path, output: str,
                                                    field: str) -> None:
    path = write(tmp_path, f"version: 1\noutput: {output}\njobs:\n  - {{id: a, prompt: x}}\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (2, field)
    assert "YAML 1.1" in p.message


@pytest.mark.parametrize(("seeds", "expected"), [
    ("[0x10, 1_000, 0b11, +5]", (16, 1000, 3, 5)),
    ("{start: 10, count: 2}", (10, 11)),
])
def test_unambiguous_integer_forms_are_still_read(tmp_path: Path, seeds: str,
                                                  expected: tuple[int, ...]) -> None:
    path = write(tmp_path, f"version: 1\njobs:\n  - id: a\n    prompt: x\n    seeds: {seeds}\n")
    assert tuple(j.seed for j in load_plan(path).jobs) == expected


# --------------------------------------------------------------------------------------
# the prompt limit is judged on the text that is sent


def test_doubled_braces_count_once_towards_the_prompt_limit(tmp_path: Path) -> None:
    prompt = "{{" + "a" * 9_999
    path = write(tmp_path, f'version: 1\njobs:\n  - {{id: a, prompt: "{prompt}", seeds: 1}}\n')
    sent = load_plan(path).jobs[0].request["prompt"]
    assert sent == "{" + "a" * 9_999 and len(sent) == 10_000
    path = write(tmp_path, f'version: 1\njobs:\n  - {{id: a, prompt: "{prompt}a", seeds: 1}}\n',
                 name="over.yaml")
    p = only(problems_of(path))
    assert p.path == "jobs[0].prompt" and "10,001 characters" in p.message


def test_doubled_braces_count_once_in_a_prompt_axis(tmp_path: Path) -> None:
    prompt = "}}" * 5_000
    path = write(tmp_path, f'version: 1\noutput: {{path: "{{id}}/{{seed}}.{{ext}}"}}\njobs:\n'
                           f'  - id: a\n    matrix: {{prompt: ["{prompt}"]}}\n    seeds: 1\n')
    assert load_plan(path).jobs[0].request["prompt"] == "}" * 5_000


# --------------------------------------------------------------------------------------
# names that Windows cannot use as a folder


@pytest.mark.parametrize("name", ["con", "nul", "aux.d", "com1", "lpt9.x", "prn", "ok."])
def test_names_windows_cannot_hold_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"version: 1\nname: {name}\njobs:\n  - {{id: a, prompt: x}}\n")
    p = only(problems_of(path))
    assert (p.line, p.path) == (2, "name")
    assert "Windows" in p.message


@pytest.mark.parametrize(("ratio", "nearest"), [
    ("16:10", "3:2"), ("1:2", "9:16"), ("4:3", "5:4"), ("3:4", "4:5"), ("32:9", "21:9"),
    ("1x1", "1:1"), ("l:1", "1:1"),
])
def test_an_unknown_aspect_ratio_suggests_the_nearest_shape(tmp_path, ratio, nearest):
    path = write(tmp_path, f'version: 1\njobs:\n  - id: a\n    prompt: p\n'
                           f'    aspect_ratio: "{ratio}"\n')
    p = only(problems_of(path))
    assert p.message.endswith(f"(the nearest is {nearest!r})"), p.message

"""Expansion: order, zip, seeds, keys, paths, shards; properties checked with Hypothesis."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stress_helpers import scale

from imagebatch.errors import ManifestError
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import (
    TMP_PREFIX,
    Axis,
    JobSpec,
    Manifest,
    OutputSettings,
    Seeds,
    expand,
    image_stem,
    in_shard,
    random_seed,
    safe,
    windows_problem,
)

ROOT = Path(__file__).resolve().parent.parent

# The example manifest of the spec (pipeline.md, "Manifest"), verbatim.
SPEC_EXAMPLE = """\
version: 1                       # required
name: launch-assets              # optional; default: the file's stem; [a-z0-9][a-z0-9._-]*
model: stable-image-ultra        # optional; default: $DIFFUSION_MODEL_ID, else stable-image-ultra
defaults:                        # request fields for every job, unless a job sets them
  aspect_ratio: "1:1"
  output_format: png
  negative_prompt: "blurry, watermark"
seeds: [1, 2, 3]                 # default seeds for every job (forms below)
output:                          # every key optional; these are the defaults
  path: "{id}/{vars}/{seed}.{ext}"   # image path template, relative to outputs/<name>/images/
  thumbnail: 256                 # longest side of thumbnails in px; 0 turns them off
  sheet:                         # contact sheet(s)
    label: "{id} {vars} #{seed}" # caption under each thumbnail
    per_page: 100                # at most this many images per sheet
jobs:
  - id: mushrooms                # required, unique in the manifest; [A-Za-z0-9._-]
    prompt: "A surreal landscape with glowing mushrooms under a night sky."
    aspect_ratio: "16:9"         # any request field overrides the defaults
    seeds: [123]
  - id: city
    prompt: "A {style} city at {time}"
    matrix:                      # cartesian product of every axis
      # a variable: fills {style} in prompt/negative_prompt/path/label
      style: [cyberpunk, "art deco"]
      time: [dawn, dusk]
      aspect_ratio: ["16:9", "9:16"]     # a request field: sets that field
    seeds: {start: 100, count: 4}
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def canonical_key(request: dict) -> str:
    """SHA-256 of the canonical JSON, written out here as the spec words it."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derived_seed(name: str, job_id: str, index: int) -> int:
    """The `{random: N}` derivation, written out independently of imagebatch.planning.plan."""
    message = b"imagebatch-seed\x00" + name.encode() + b"\x00" + job_id.encode() + b"\x00" + \
        str(index).encode()
    (first8,) = struct.unpack(">Q", hashlib.sha256(message).digest()[:8])
    return first8 % 4294967295 + 1


# --------------------------------------------------------------------------------------
# the spec's example


def test_spec_example_paths_order_and_bodies(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, SPEC_EXAMPLE, name="launch.yaml"))
    assert (plan.name, plan.model, plan.total) == ("launch-assets", "stable-image-ultra", 33)
    paths = [j.path for j in plan.jobs]
    assert paths[0] == "mushrooms/123.png"
    assert paths[1] == "city/cyberpunk-dawn-16-9/100.png"
    # style, then time, then aspect_ratio, then seeds: the last written varies fastest
    assert paths[1:10] == [f"city/cyberpunk-dawn-16-9/{s}.png" for s in (100, 101, 102, 103)] + \
        [f"city/cyberpunk-dawn-9-16/{s}.png" for s in (100, 101, 102, 103)] + \
        ["city/cyberpunk-dusk-16-9/100.png"]
    assert paths[-1] == "city/art-deco-dusk-9-16/103.png"
    assert plan.jobs[0].request == {
        "model": "stable-image-ultra", "prompt": "A surreal landscape with glowing mushrooms "
        "under a night sky.", "negative_prompt": "blurry, watermark", "aspect_ratio": "16:9",
        "output_format": "png", "seed": 123}
    last = plan.jobs[-1]
    assert last.request["prompt"] == "A art deco city at dusk"
    assert last.request["aspect_ratio"] == "9:16"
    assert last.vars == (("style", "art deco"), ("time", "dusk"), ("aspect_ratio", "9:16"))
    assert last.label == "city art deco-dusk-9:16 #103"
    assert plan.jobs[0].label == "mushrooms #123"
    assert [j.index for j in plan.jobs] == list(range(33))


def test_bodies_are_canonical_and_keys_their_sha256(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, SPEC_EXAMPLE, name="launch.yaml"))
    for job in plan.jobs:
        request = json.loads(job.body)
        assert job.body == json.dumps(request, sort_keys=True, separators=(",", ":"),
                                      ensure_ascii=False)
        assert job.key == canonical_key(request)
        assert request["seed"] == job.seed
    assert len({j.key for j in plan.jobs}) == len(plan.jobs)


def test_non_ascii_is_written_as_itself_in_the_body(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, 'version: 1\njobs:\n  - {id: a, prompt: "Café ☕ 東京", '
                                     'seeds: 1}\n'))
    job = plan.jobs[0]
    assert '"prompt":"Café ☕ 東京"' in job.body
    assert job.key == hashlib.sha256(job.body.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# zip


ZIP = """
version: 1
jobs:
  - id: z
    prompt: "{subject} in {place}, {mood}"
    zip:
      subject: [fox, owl, cat]
      place: [forest, barn, city]
    matrix:
      mood: [calm, wild]
    seeds: [1, 2]
"""


def test_zip_varies_together_crossed_with_matrix_and_seeds(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, ZIP))
    got = [(j.request["prompt"], j.seed) for j in plan.jobs]
    assert got == [(f"{s} in {p}, {m}", seed)
                   for s, p in (("fox", "forest"), ("owl", "barn"), ("cat", "city"))
                   for m in ("calm", "wild") for seed in (1, 2)]
    assert plan.jobs[0].path == "z/fox-forest-calm/1.png"
    assert plan.jobs[0].vars == (("subject", "fox"), ("place", "forest"), ("mood", "calm"))


def test_zip_written_after_matrix_varies_faster(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, """
        version: 1
        jobs:
          - id: w
            prompt: "{subject}, {mood}"
            matrix:
              mood: [calm, wild]
            zip:
              subject: [fox, owl]
              aspect_ratio: ["16:9", "1:1"]
            seeds: 5
    """))
    got = [(j.request["prompt"], j.request["aspect_ratio"]) for j in plan.jobs]
    assert got == [("fox, calm", "16:9"), ("owl, calm", "1:1"),
                   ("fox, wild", "16:9"), ("owl, wild", "1:1")]
    assert [j.path for j in plan.jobs][:2] == ["w/calm-fox-16-9/5.png", "w/calm-owl-1-1/5.png"]


def test_zip_needs_equal_lengths(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: z
            prompt: "{a} {b}"
            zip:
              a: [1, 2, 3]
              b: [1, 2]
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert (p.line, p.column, p.path) == (6, 7, "jobs[0].zip")  # the zip's first axis
    assert "equal lengths: a has 3, b has 2" in p.message


def test_an_axis_in_both_zip_and_matrix_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - id: z
            prompt: "{a}"
            zip: {a: [1, 2]}
            matrix: {a: [3]}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    assert any(p.path == "jobs[0].matrix.a" and "already an axis of zip" in p.message
               for p in info.value.problems)


def test_swept_size_replaces_inherited_ratio(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, """
        version: 1
        defaults: {aspect_ratio: "1:1"}
        jobs:
          - id: s
            prompt: x
            matrix: {size: [1344x768, 640x1536]}
            seeds: 1
    """))
    assert [j.request.get("aspect_ratio") for j in plan.jobs] == [None, None]
    assert [j.request["size"] for j in plan.jobs] == ["1344x768", "640x1536"]
    assert [j.path for j in plan.jobs] == ["s/1344x768/1.png", "s/640x1536/1.png"]


def test_jpeg_gives_jpg_and_aspect_placeholder(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, """
        version: 1
        output: {path: "{aspect}/{id}-{seed}-{index}-{key}.{ext}"}
        jobs:
          - {id: a, prompt: x, output_format: jpeg, aspect_ratio: "21:9", seeds: [4]}
          - {id: b, prompt: x, size: 832x1216, seeds: [4]}
    """))
    a, b = plan.jobs
    assert a.path == f"21x9/a-4-0-{a.key[:12]}.jpg" and a.ext == "jpg"
    assert b.path == f"2x3/b-4-1-{b.key[:12]}.png" and b.ext == "png"


# --------------------------------------------------------------------------------------
# seeds


def test_random_seeds_follow_the_sha256_derivation(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, """
        version: 1
        name: launch-assets
        jobs:
          - {id: city, prompt: x, seeds: {random: 3}}
          - {id: other, prompt: y, seeds: {random: 2}}
    """))
    got = [(j.id, j.seed) for j in plan.jobs]
    assert got == [("city", derived_seed("launch-assets", "city", i)) for i in range(3)] + \
        [("other", derived_seed("launch-assets", "other", i)) for i in range(2)]
    # fixed values: changing the derivation would change every user's "random" seeds
    assert [s for _, s in got[:3]] == [789269488, 4035650875, 4180868248]
    assert [random_seed("launch-assets", "city", i) for i in range(3)] == \
        [789269488, 4035650875, 4180868248]


def test_random_seeds_depend_on_name_and_id(tmp_path: Path) -> None:
    a = derived_seed("one", "job", 0)
    assert random_seed("one", "job", 0) == a
    assert random_seed("two", "job", 0) != a
    assert random_seed("one", "job2", 0) != a
    assert min(random_seed("n", "j", i) for i in range(2000)) >= 1
    assert max(random_seed("n", "j", i) for i in range(2000)) <= 4294967295


def test_a_job_without_seeds_gets_one_random_seed(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, "version: 1\nname: lone\njobs:\n  - {id: a, prompt: x}\n"))
    assert [j.seed for j in plan.jobs] == [derived_seed("lone", "a", 0)]
    assert [j.seed for j in plan.jobs] == list(Seeds(random=1).resolve("lone", "a"))


RANDOM_SNIPPET = """
import json, sys
from imagebatch.planning.manifest import load_plan
plan = load_plan(sys.argv[1])
print(json.dumps([[j.seed, j.key, j.path] for j in plan.jobs]))
"""


def test_random_seeds_are_the_same_in_every_process(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        name: proc
        jobs:
          - id: a
            prompt: "{v}"
            matrix: {v: [x, y, z]}
            seeds: {random: 4}
    """)
    outputs = []
    for hashseed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        res = subprocess.run([sys.executable, "-c", RANDOM_SNIPPET, path], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True)
        outputs.append(res.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    rows = json.loads(outputs[0])
    assert [r[0] for r in rows[:4]] == [derived_seed("proc", "a", i) for i in range(4)]


# --------------------------------------------------------------------------------------
# paths


def test_values_are_made_safe_in_paths_but_not_in_prompts(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, """
        version: 1
        output: {path: "{id}/{style}/{seed}.{ext}", sheet: {label: "{style}"}}
        jobs:
          - id: a
            prompt: "in {style}"
            matrix:
              style: ["art deco", "a/b\\\\c", "...x", "café:1", "．．"]
            seeds: 1
    """))
    paths = [j.path for j in plan.jobs]
    assert paths[0] == "a/art-deco/1.png"
    assert paths[1] == "a/a-b-c/1.png"
    assert paths[2] == "a/...x/1.png"  # leading dots are a plain name (trailing: Windows drops)
    assert paths[3] == "a/caf--1/1.png"
    assert paths[4] == "a/--/1.png"
    assert [j.request["prompt"] for j in plan.jobs][1] == "in a/b\\c"
    assert [j.label for j in plan.jobs][3] == "café:1"


def test_a_value_of_dot_dot_cannot_climb_out(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        output: {path: "{v}/{seed}.{ext}"}
        jobs:
          - {id: a, prompt: "{v}", matrix: {v: ["..", "."]}, seeds: 1}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    assert len(info.value.problems) == 2
    for p in info.value.problems:
        assert (p.line, p.path) == (4, "jobs[0]")
        assert "climbs out" in p.message


def test_safe() -> None:
    assert safe("art deco") == "art-deco"
    assert safe("a/b\\c\x00d") == "a-b-c-d"
    assert safe("ＡＢ․") == "---"
    assert safe("ok_1.2-3") == "ok_1.2-3"


def test_empty_path_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: 1\noutput: {path: "{vars}"}\njobs:\n  - {id: a, prompt: x}\n')
    with pytest.raises(ManifestError, match="is empty or climbs out"):
        load_plan(path)


def test_too_long_path_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        version: 1
        jobs:
          - {{id: a, prompt: "{{v}}", matrix: {{v: ["{'w' * 300}"]}}, seeds: 1}}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    assert "output path is too long" in info.value.problems[0].message


def test_two_jobs_with_one_path_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        output: {path: "{id}.{ext}"}
        jobs:
          - {id: a, prompt: x, seeds: [1, 2]}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert (p.line, p.column, p.path) == (4, 10, "jobs[0]")
    assert "output path 'a.png' collides with 'a.png'" in p.message
    assert "{seed}" in p.message


def test_paths_differing_only_in_case_collide(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - {id: Fox, prompt: x, seeds: 1}
          - {id: fox, prompt: y, seeds: 1}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert (p.line, p.path) == (4, "jobs[1]")
    assert "'fox/1.png' collides with 'Fox/1.png'" in p.message


def test_paths_differing_only_in_their_extension_are_refused(tmp_path: Path) -> None:
    # a/1.png and a/1.webp would share one thumbnail, thumbs/a/1.jpg
    path = write(tmp_path, """
        version: 1
        output: {path: "{id}/{seed}.{ext}"}
        jobs:
          - {id: a, prompt: x, seeds: [1], matrix: {output_format: [png, jpeg]}}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert p.path == "jobs[0]"
    assert "'a/1.jpg' differs from 'a/1.png' only in its extension" in p.message
    assert "{vars}" in p.message
    # with what tells them apart in the name, both are planned
    Path(path).write_text(Path(path).read_text().replace("{id}/{seed}", "{id}/{vars}-{seed}"))
    assert [j.path for j in load_plan(path).jobs] == ["a/png-1.png", "a/jpeg-1.jpg"]


def test_image_stem_drops_only_an_image_extension() -> None:
    assert image_stem("fox/7.png") == "fox/7"
    assert image_stem("fox/a.b/7.WEBP") == "fox/a.b/7"
    assert image_stem("7.jpeg") == "7"
    assert image_stem("fox/v1.5") == "fox/v1.5"  # not an extension: the name stays whole
    assert image_stem("fox/.png") == "fox/.png"


def test_an_image_where_another_needs_a_folder_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        output: {path: "{seed}/{vars}"}
        jobs:
          - {id: p, prompt: plain, seeds: 1}
          - {id: q, prompt: "{v}", matrix: {v: [x]}, seeds: 1}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert p.path == "output.path" and p.line == 2
    assert "'1' is both an image and a folder" in p.message


def test_the_same_request_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - {id: a, prompt: same, seeds: [1, 2]}
          - {id: b, prompt: same, seeds: 2}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert (p.line, p.path) == (4, "jobs[1]")
    assert "sends the same request as job #1 (a/2.png)" in p.message


def test_a_variable_used_in_no_prompt_is_the_same_request(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        jobs:
          - {id: a, prompt: constant, matrix: {v: [x, y]}, seeds: 1}
    """)
    with pytest.raises(ManifestError, match="a variable that appears in no prompt"):
        load_plan(path)


# --------------------------------------------------------------------------------------
# property: no path ever leaves images/

@pytest.mark.parametrize("ids", [("a", "A"), ("A", "a")])
def test_an_image_and_a_folder_differing_only_in_case_are_refused(
        tmp_path: Path, ids: tuple[str, str]) -> None:
    # the plain job's image is the file `a` (or `A`), the other's folder `A/` (or `a/`)
    first, second = ids
    path = write(tmp_path, f"""
        version: 1
        output: {{path: "{{id}}/{{vars}}"}}
        jobs:
          - {{id: {first}, prompt: plain, seeds: 1}}
          - {{id: {second}, prompt: "{{v}}", matrix: {{v: [x]}}, seeds: 1}}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert p.path == "output.path" and p.line == 2
    assert "both an image and a folder" in p.message
    assert "'a'" in p.message and "'A'" in p.message


def test_a_folder_then_an_image_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        output: {path: "{id}/{vars}"}
        jobs:
          - {id: A, prompt: "{v}", matrix: {v: [x]}, seeds: 1}
          - {id: a, prompt: plain, seeds: 1}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert (p.line, p.path) == (5, "jobs[1]")
    assert "output path 'a' is both an image and a folder of other images" in p.message
    assert "the folder 'A' differs only in letter case" in p.message


@pytest.mark.parametrize(("job_id", "template", "values", "bad"), [
    ("a.", "{id}/{seed}.{ext}", ["x"], "'a.'"),
    ("CON", "{id}/{seed}.{ext}", ["x"], "'CON'"),
    ("nul", "{id}/{seed}.{ext}", ["x"], "'nul'"),
    ("a", "{id}/{v}/{seed}.{ext}", ["Com1"], "'Com1'"),
    ("a", "{id}/{v}.{ext}", ["lpt9"], "'lpt9.png'"),
    ("a", "{id}/{v}/{seed}.{ext}", ["aux.tar.gz"], "'aux.tar.gz'"),
    ("a", "{id}/{v}/{seed}.{ext}", ["x..."], "'x...'"),
    ("a", "{id}/prn.{seed}.{ext}", ["x"], "'prn.1.png'"),
    ("a", "{id}/out /{v}{seed}.{ext}", ["x"], "'out '"),
])
def test_path_parts_windows_cannot_hold_are_refused(
        tmp_path: Path, job_id: str, template: str, values: list[str], bad: str) -> None:
    path = write(tmp_path, f"""
        version: 1
        output: {{path: "{template}"}}
        jobs:
          - {{id: "{job_id}", prompt: "{{v}}", matrix: {{v: {json.dumps(values)}}}, seeds: 1}}
    """)
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (p,) = info.value.problems
    assert (p.line, p.path) == (4, "jobs[0]")
    assert bad in p.message and "Windows" in p.message


@pytest.mark.parametrize("part", ["console", "COM10", "xnul", "con-1", "a.b", ".hidden"])
def test_names_that_only_look_reserved_are_accepted(tmp_path: Path, part: str) -> None:
    path = write(tmp_path, f"""
        version: 1
        output: {{path: "{{v}}/{{seed}}.{{ext}}"}}
        jobs:
          - {{id: a, prompt: "{{v}}", matrix: {{v: ["{part}"]}}, seeds: 1}}
    """)
    assert [j.path for j in load_plan(path).jobs] == [f"{part}/1.png"]


def test_expand_refuses_a_template_variable_a_job_lacks() -> None:
    spec = JobSpec("b", "jobs[0]", (("prompt", "x"),), (), Seeds(values=(1,)), (4, 9), (4, 20))
    m = Manifest("m.yaml", "m", "model", OutputSettings(path="{style}/{seed}.{ext}"), (spec,),
                 (2, 9))
    with pytest.raises(ManifestError) as info:
        expand(m)
    (p,) = info.value.problems
    assert (p.line, p.column, p.path) == (2, 9, "output.path")
    assert "job 'b' (jobs[0]) has no {style}" in p.message


HOSTILE = st.sampled_from([
    "..", ".", "/", "//", "\\", "..\\..", "\x00", "/etc/passwd", "C:", "~", "．．", "\u2025",
    "\u2024\u2024", "\u2215", "\u29f8", "\uff0f", "a" * 250, "é" * 120, " ", "%2e%2e", "$HOME",
    "{", "}", "{{", "}}", "{seed}", "\n", "\t", "-", "_", "ok",
])
PIECE = st.one_of(HOSTILE, st.text(min_size=0, max_size=12))
HOSTILE_TEXT = st.lists(PIECE, min_size=1, max_size=4).map("".join)
PREFIX = st.lists(
    st.one_of(st.sampled_from(["{id}", "{seed}", "{vars}", "{v}", "{ext}", "{key}", "{aspect}",
                               "{index}", "/", ".", "a", "x.y", "-"]), HOSTILE),
    min_size=0, max_size=6).map("".join)
# a tail that keeps paths distinct, so most examples get past collision checks to the paths
TEMPLATE = st.tuples(PREFIX, st.sampled_from(["/{v}/{seed}.{ext}", "{v}{seed}", "/{key}",
                                              "{vars}-{seed}", "/{seed}/{v}"])).map("".join)
NAME = st.one_of(st.sampled_from(["hostile", "a.b", "x-1"]), HOSTILE_TEXT)
JOB_ID = st.one_of(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), HOSTILE_TEXT)


@example(job_id="a", name="n", values=["..", ".", "/", "\\"], template="{v}-{seed}")
@example(job_id="..a", name="n", values=["\u2025", "\uff0e\uff0e"], template="{id}/{v}/{seed}")
@example(job_id="x", name="n", values=["/etc/passwd", "C:\\w"], template="/{v}/{seed}")
@settings(max_examples=scale(300, 100), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job_id=JOB_ID, name=NAME, values=st.lists(HOSTILE_TEXT, min_size=1, max_size=3,
       unique=True), template=TEMPLATE)
def test_no_path_leaves_the_images_folder(tmp_path: Path, job_id: str, name: str,
                                          values: list[str], template: str) -> None:
    doc = {"version": 1, "name": name, "output": {"path": template},
           "jobs": [{"id": job_id, "prompt": "x {v}", "matrix": {"v": values}, "seeds": [1, 2]}]}
    path = tmp_path / "hostile.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    try:
        plan = load_plan(str(path))
    except ManifestError as exc:
        assert all(p.file == str(path) and p.line >= 1 for p in exc.problems)
        return
    root = (tmp_path / "images").resolve()
    assert "/" not in plan.name and plan.name not in (".", "..")
    for job in plan.jobs:
        pure = PurePosixPath(job.path)
        assert not pure.is_absolute()
        assert job.path == "/".join(pure.parts)
        assert all(part not in ("", ".", "..") for part in job.path.split("/"))
        assert "\x00" not in job.path and "\\" not in job.path
        assert (root / job.path).resolve().is_relative_to(root)


# --------------------------------------------------------------------------------------
# properties of expansion, on Manifests built directly

VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="{}"), min_size=1,
                max_size=8).filter(  # refused, tested above
    lambda v: v not in (".", "..") and windows_problem(safe(v)) is None
    and not safe(v).startswith(TMP_PREFIX))  # e.g. ".tmp:": a temp file's name, refused


@st.composite
def seeds_strategy(draw: st.DrawFn) -> Seeds:
    form = draw(st.sampled_from(["values", "range", "random"]))
    if form == "values":
        return Seeds(values=tuple(draw(st.lists(st.integers(1, 2**32 - 1), min_size=1,
                                                 max_size=4, unique=True))))
    if form == "range":
        return Seeds(start=draw(st.integers(1, 10**6)), count=draw(st.integers(1, 5)))
    return Seeds(random=draw(st.integers(1, 5)))


@st.composite
def job_spec(draw: st.DrawFn, index: int) -> JobSpec:
    groups = []
    variables = []
    for g in range(draw(st.integers(0, 3))):
        width = draw(st.integers(1, 2))  # 1: a matrix axis; 2: a zip of two
        length = draw(st.integers(1, 3))
        group = []
        for w in range(width):
            name = f"v{g}_{w}"
            values = draw(st.lists(VALUE, min_size=length, max_size=length, unique=True))
            group.append(Axis(name, tuple(values), False, (1, 1)))
            variables.append(name)
        groups.append(tuple(group))
    prompt = f"job {index} " + " ".join("{" + v + "}" for v in variables)
    return JobSpec(f"j{index}", f"jobs[{index}]", (("prompt", prompt),), tuple(groups),
                   draw(seeds_strategy()), (1, 1), (1, 1))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    n = draw(st.integers(1, 3))
    jobs = tuple(draw(job_spec(i)) for i in range(n))
    return Manifest("prop.yaml", "prop", "stable-image-ultra",
                    OutputSettings(path="{id}/{key}/{vars}/{seed}.{ext}"), jobs)


@settings(max_examples=scale(200, 60), deadline=None)
@given(m=manifests())
def test_count_is_the_product_of_axes_and_seeds(m: Manifest) -> None:
    plan = expand(m)
    expected = sum(len(j.seeds) * math.prod(len(g[0].values) for g in j.groups) for j in m.jobs)
    assert plan.total == len(plan.jobs) == expected == sum(j.count for j in m.jobs)
    assert [j.index for j in plan.jobs] == list(range(expected))


@settings(max_examples=scale(200, 60), deadline=None)
@given(m=manifests())
def test_keys_are_unique_and_the_sha256_of_the_canonical_body(m: Manifest) -> None:
    plan = expand(m)
    keys = [j.key for j in plan.jobs]
    assert len(set(keys)) == len(keys)
    for job in plan.jobs:
        assert job.key == canonical_key(json.loads(job.body))
        assert json.loads(job.body)["seed"] == job.seed
        assert json.loads(job.body)["model"] == "stable-image-ultra"


@settings(max_examples=scale(100, 30), deadline=None)
@given(m=manifests())
def test_shards_partition_the_plan(m: Manifest) -> None:
    whole = expand(m)
    everything = [j.key for j in whole.jobs]
    for n in range(1, 8):
        parts = [expand(m, shard=(k, n)) for k in range(1, n + 1)]
        seen: list[str] = []
        for k, part in enumerate(parts, 1):
            assert part.total == whole.total and part.shard == (k, n)
            assert all(in_shard(j.key, (k, n)) for j in part.jobs)
            seen.extend(j.key for j in part.jobs)
        assert len(seen) == len(set(seen)), "a job in two shards"
        assert sorted(seen) == sorted(everything), "a job in no shard"


@settings(max_examples=scale(100, 30), deadline=None)
@given(m=manifests())
def test_expansion_is_deterministic(m: Manifest) -> None:
    assert expand(m) == expand(m)
    assert [j.body for j in expand(m).jobs] == [j.body for j in expand(m).jobs]


def test_shard_assignment_is_by_key_prefix() -> None:
    key = "00000000000000ff" + "0" * 48
    assert [in_shard(key, (k, 5)) for k in range(1, 6)] == [k - 1 == 255 % 5 for k in range(1, 6)]
    assert in_shard(key, None)


def test_loading_twice_gives_equal_plans(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE, name="launch.yaml")
    assert load_plan(path) == load_plan(path)

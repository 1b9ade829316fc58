"""The manifest's `exports:` section: validation with locations, clashes refused before
anything is written, the JSON Schema, and the pure geometry of every file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from imagebatch.cli import main
from imagebatch.errors import ManifestError, Problem
from imagebatch.planning.exportplan import geometry
from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import ExportSettings

ROOT = Path(__file__).resolve().parent.parent
HEAD = """\
version: 1
name: shop
seeds: [1, 2]
jobs:
  - id: fox
    prompt: "A fox, {medium}"
    matrix:
      medium: [ink, clay]
"""


def write(tmp_path: Path, exports: str, head: str = HEAD) -> str:
    path = tmp_path / "shop.yaml"
    path.write_text(head + "exports:\n" + textwrap.indent(textwrap.dedent(exports), "  "),
                    encoding="utf-8")
    return str(path)


def problems_of(path: str) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    assert info.value.problems
    return info.value.problems


def by_field(problems: list[Problem]) -> dict[str, Problem]:
    return {p.path: p for p in problems}


def test_exports_are_read_with_defaults(tmp_path):
    path = write(tmp_path, """\
        - name: web
          path: "{id}/{vars}-{width}w.{format}"
          width: [1600, 800, 400]
          format: [webp, jpeg]
          quality: 82
        - size: 1200x630
          focus: [0.5, 0.25]
          format: png
          background: "#102030"
          upscale: true
          metadata: strip
        - from: {rating: 4}
          size: 256x256
          fit: contain
          background: navy
        - from: all
          width: 640
          format: avif
        """)
    web, card, thumbs, every = load_plan(path).exports
    assert web == ExportSettings(
        name="web", path="{id}/{vars}-{width}w.{format}", widths=(1600, 800, 400),
        formats=("webp", "jpeg"), quality=82, where="exports[0]", loc=web.loc,
        path_loc=(11, 11), size_loc=(12, 12))
    assert (card.name, card.size, card.fit, card.focus, card.formats) == \
        ("export-2", (1200, 630), "cover", (0.5, 0.25), ("png",))
    assert (card.background, card.upscale, card.metadata) == ((16, 32, 48), True, "strip")
    assert (thumbs.name, thumbs.source, thumbs.rating, thumbs.fit, thumbs.background) == \
        ("export-3", "rating", 4, "contain", (0, 0, 128))
    assert thumbs.formats == ("webp",) and thumbs.path.startswith("{export}/")
    assert (every.source, every.widths, every.formats) == ("all", (640,), ("avif",))


def test_every_export_mistake_is_located_and_reported_at_once(tmp_path):
    path = write(tmp_path, """\
        - name: web
          path: "/abs/{id}.{format}"
          width: [1600, 800]
          format: [webp, jpg]
          quality: 101
        - name: og
          path: "og/{id}.{fromat}"
          size: 0x0
          focus: [0.5, 1.3]
          background: #fff
          upscale: yes
          metadta: keep
        - from: rating
          format: [png, png]
        - from: {rating: 6}
          fit: contain
        - path: "../{id}.png"
        - width: [100, 100]
          size: 10x10
        - name: Bad Name
        - name: og
        """)
    found = by_field(problems_of(path))
    expect = {
        "exports[0].path": (11, 11, "must be relative to the export root, not absolute"),
        "exports[0].format[1]": (13, 20, ("'jpg' is not one of png, jpeg, webp, avif "
                                          "(did you mean 'jpeg'?)")),
        "exports[0].quality": (14, 14, "101 is out of range 1..100"),
        "exports[1].path": (16, 11, "unknown placeholder {fromat}; did you mean {format}?"),
        "exports[1].size": (17, 11, "each side must be 1..8,192 pixels"),
        "exports[1].focus[1]": (18, 18, "1.3 is out of range 0..1"),
        "exports[1].background": (19, 16, 'must be quoted, since # starts a YAML comment'),
        "exports[1].upscale": (20, 14, "write true or false, not 'yes'"),
        "exports[1].metadta": (21, 5, "did you mean 'metadata'?"),
        "exports[2].from": (22, 11, "write {rating: N}"),
        "exports[2].format[1]": (23, 19, "'png' is already exports[2].format[0]"),
        "exports[3].from.rating": (24, 20, "6 is out of range 1..5"),
        "exports[3].fit": (25, 5, "fit applies to size: WxH"),
        "exports[4].path": (26, 11, "must not climb out with '..'"),
        "exports[5].size": (28, 5, "set either width (height follows) or size"),
        "exports[6].name": (29, 11, "'Bad Name' is not a valid name"),
        "exports[7].name": (30, 11, "'og' is already the name of exports[1]"),
    }
    for field, (line, col, text) in expect.items():
        assert field in found, (field, sorted(found))
        p = found[field]
        assert (p.line, p.column) == (line, col), (field, str(p))
        assert text in p.message, (field, p.message)
    assert str(found["exports[0].quality"]).startswith(f"{path}:14:14: exports[0].quality: ")


def test_a_default_name_taken_by_a_named_export_is_refused(tmp_path):
    path = write(tmp_path, """\
        - name: export-2
          format: png
        - format: jpeg
        """)
    p = by_field(problems_of(path))["exports[1].name"]
    assert "'export-2' is already the name of exports[0]" in p.message


@pytest.mark.parametrize(("exports", "field", "text"), [
    ('- path: "{id}/{vars}/{seed}.{format}"\n  width: [800, 400]\n',
     "exports[0].path", "2 widths would write one file; add {width} to the path"),
    ('- path: "{id}/{vars}/{seed}-{width}.png"\n  width: [800, 400]\n  format: [png, webp]\n',
     "exports[0].path", "2 formats would write one file; add {format} to the path"),
    ("- width: [" + ", ".join(str(i) for i in range(1, 10_001)) + "]\n",
     "exports[0].width", "has 10,000 widths; an export may have at most 32"),
    ("- width: 0\n", "exports[0].width", "0 is out of range 1..8,192"),
    ("- size: 1200\n", "exports[0].size", "'1200' is not WIDTHxHEIGHT"),
    ("- size: 1200x630\n  fit: contain\n  focus: [0.5, 0.5]\n",
     "exports[0].focus", "needs size: WxH and fit: cover"),
    ("- format: [gif]\n", "exports[0].format[0]", "'gif' is not one of png, jpeg, webp, avif"),
    ("- background: '#ff000080'\n", "exports[0].background", "is not a colour"),
    ("- from: everything\n", "exports[0].from", "is not one of picks, all"),
])
def test_export_settings_out_of_range_are_refused(tmp_path, exports, field, text):
    problems = by_field(problems_of(write(tmp_path, exports)))
    assert field in problems, sorted(problems)
    assert text in problems[field].message


def test_more_than_sixteen_exports_are_refused(tmp_path):
    path = write(tmp_path, "".join(f"- name: e{i}\n" for i in range(17)))
    assert "at most 16 exports" in by_field(problems_of(path))["exports"].message


def test_files_written_twice_are_refused_at_validation(tmp_path):
    path = write(tmp_path, """\
        - path: "x/{id}-{seed}.png"
          format: png
        - path: "x/{id}-{seed}.png"
          format: png
          from: all
        - path: "y/{id}.png"
          format: png
          from: all
        - path: "assets.json"
          format: png
        - path: "w/{id}/{vars}/{seed}-{width}.{format}"
          width: [8000, 7000]
        - path: "W/{id}/{vars}/{seed}-{width}.{format}"
          width: 8000
        - path: "z/{id}/{vars}/{seed}.png"
          format: png
          width: 8192
          upscale: true
        """)
    problems = problems_of(path)
    text = "\n".join(map(str, problems))
    assert f"{path}:12:11: exports[1].path: 'x/fox-1.png' is also written by exports[0] " \
           "('export-1'); two exports cannot write one file" in text
    assert f"{path}:15:11: exports[2].path: 'y/fox.png' would be written for both " \
           "fox/ink/1.png and fox/ink/2.png; add {seed} to the path" in text
    assert f"{path}:18:11: exports[3].path: 'assets.json': for fox/ink/1.png the path " \
           "'assets.json' is a file the export keeps for itself" in text
    # two widths above the images' 1024 both give 1024: one file, not a clash; but another
    # export writing it (letter case aside) is one
    assert "exports[4].path:" not in text
    assert "exports[5].path: 'W/fox/ink/1-1024.webp' is also written by exports[4]" in text
    assert "they differ only in letter case" in text
    assert f"{path}:26:12: exports[6].width: fox/ink/1.png: the file would be 8192x8192 " \
           "pixels; a file may have at most 40,000,000" in text
    assert len(problems) == 5, text  # one problem per export and kind, not one per job


def test_a_picks_export_may_give_two_jobs_one_path(tmp_path):
    # one picked seed per variant is the usual case; a clash is judged when picks are known
    path = write(tmp_path, '- path: "{id}/{vars}.{format}"\n  format: png\n')
    assert len(load_plan(path).jobs) == 4


def test_validate_and_export_refuse_a_bad_export_before_writing(tmp_path, capsys):
    path = write(tmp_path, '- path: "../{id}.png"\n  format: png\n')
    assert main(["validate", path]) == 2
    assert main(["export", path, "--out", str(tmp_path / "out"),
                 "--assets", str(tmp_path / "assets")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:10:11: exports[0].path: '../{{id}}.png': must not climb out" in err
    assert "Traceback" not in err
    assert not (tmp_path / "assets").exists()


def test_schema_accepts_the_examples_and_refuses_bad_exports():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "imagebatch.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    base = {"version": 1, "jobs": [{"id": "a", "prompt": "x"}]}
    good = {"name": "web", "from": {"rating": 4}, "path": "{id}-{width}.{format}",
            "width": [800, 400], "format": ["webp", "avif"], "quality": 80,
            "background": "#fff", "upscale": False, "metadata": "strip"}
    assert validator.is_valid({**base, "exports": [good, {"size": "1200x630", "fit": "cover",
                                                          "focus": [0.5, 0.2]}]})
    for bad in ({"format": "gif"}, {"quality": 101}, {"width": [800, 800]}, {"width": 0},
                {"size": "1200"}, {"focus": [0.5, 1.5], "size": "10x10"}, {"fit": "cover"},
                {"width": 10, "size": "10x10"}, {"from": {"rating": 6}}, {"from": "best"},
                {"metadata": "drop"}, {"upscale": "yes"}, {"widths": [10]},
                {"width": list(range(1, 34))}):
        assert not validator.is_valid({**base, "exports": [bad]}), bad


# ---- geometry ------------------------------------------------------------------------------

def test_widths_follow_the_aspect_and_never_enlarge_unless_asked():
    spec = ExportSettings(name="w", widths=(800, 2000))
    assert geometry(spec, (1344, 768), 800).canvas == (800, 457)
    assert geometry(spec, (1344, 768), 2000).canvas == (1344, 768)
    up = ExportSettings(name="w", widths=(2000,), upscale=True)
    assert geometry(up, (1344, 768), 2000).canvas == (2000, 1143)
    assert geometry(spec, (1344, 768), None).canvas == (1344, 768)


def test_cover_crops_around_the_focus_and_stays_inside():
    spec = ExportSettings(name="c", size=(200, 200), focus=(0.6, 0.5))
    g = geometry(spec, (1000, 500), None)
    assert g.canvas == g.scaled == (200, 200)
    assert g.crop == (350.0, 0.0, 850.0, 500.0)  # centred on x = 600
    edge = geometry(ExportSettings(name="c", size=(200, 200), focus=(1.0, 0.0)), (1000, 500),
                    None)
    assert edge.crop == (500.0, 0.0, 1000.0, 500.0)  # clamped at the right edge


def test_cover_without_upscale_shrinks_the_box_keeping_its_shape():
    g = geometry(ExportSettings(name="c", size=(1200, 630)), (1024, 1024), None)
    assert g.canvas == (1024, 538)
    assert g.crop == (0.0, 243.0, 1024.0, 781.0)  # whole pixels: a plain crop
    up = geometry(ExportSettings(name="c", size=(1200, 630), upscale=True), (1024, 1024), None)
    assert up.canvas == (1200, 630)


def test_contain_fits_inside_and_centres_in_the_box():
    g = geometry(ExportSettings(name="c", size=(300, 300), fit="contain"), (1000, 500), None)
    assert (g.scaled, g.canvas, g.offset) == ((300, 150), (300, 300), (0, 75))
    small = geometry(ExportSettings(name="c", size=(300, 300), fit="contain"), (100, 50), None)
    assert (small.scaled, small.canvas, small.offset) == ((100, 50), (300, 300), (100, 125))


def test_a_clash_hint_names_only_placeholders_that_tell_the_jobs_apart_and_are_missing():
    from imagebatch.planning.exportplan import _telling_apart
    from imagebatch.planning.plan import Job

    def job(id_: str, seed: int, vars_: tuple[tuple[str, str], ...] = ()) -> Job:
        return Job(index=0, id=id_, key="0" * 64, path=f"{id_}/{seed}.png", body="{}",
                   seed=seed, vars=vars_, label="")

    a, b = job("fox", 1, (("style", "ink"),)), job("fox", 2, (("style", "oil"),))
    assert _telling_apart("{id}.{format}", a, b) == "{seed} or {vars}"
    assert _telling_apart("{id}/{seed}.{format}", a, b) == "{vars}"  # {seed} is there already
    c = job("fox", 1, (("style", "oil"),))
    assert _telling_apart("{id}/{seed}.{format}", a, c) == "{vars}"
    assert _telling_apart("{vars}/{seed}.{format}", a, job("cat", 1, (("style", "ink"),))) \
        == "{id}"

"""Hostile manifests: names, ids, variables and path templates that try to climb out of
outputs/<name>/ (`..`, absolute paths, NUL, very long names, Unicode look-alikes of `/`,
Windows separators) are refused or made safe, and after running whatever is accepted nothing
exists outside outputs/<name>/ that was not there before. Prompts carrying HTML stay text in
index.html.
"""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import pytest
from stress_helpers import load, snapshot_tree

from imagebatch.cli import main

pytestmark = pytest.mark.stress

LOOKALIKES = {
    "fullwidth solidus": "\uff0f",
    "division slash": "\u2215",
    "fraction slash": "\u2044",
    "big solidus": "\u29f8",
    "fullwidth reverse solidus": "\uff3c",
    "one dot leader": "\u2024",
}


def _yaml(text: str) -> str:
    """A YAML double-quoted scalar holding `text` exactly (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=True)


def _manifest(*, name: str = "hostile", job_id: str = "fox", path: str | None = None,
              matrix: dict[str, list[str]] | None = None, prompt: str = "a fox {where}") -> str:
    lines = ["version: 1", f"name: {_yaml(name)}"]
    if path is not None:
        lines += ["output:", f"  path: {_yaml(path)}"]
    lines += ["jobs:", f"  - id: {_yaml(job_id)}", f"    prompt: {_yaml(prompt)}",
              "    output_format: jpeg", "    seeds: [1]"]
    matrix = {"where": ["here"]} if matrix is None else matrix
    lines.append("    matrix:")
    for var, values in matrix.items():
        lines.append(f"      {var}: [{', '.join(_yaml(v) for v in values)}]")
    return "\n".join(lines) + "\n"


# case -> (manifest text, words the refusal must contain)
REFUSED: dict[str, tuple[str, str]] = {
    "name ..": (_manifest(name=".."), "name:"),
    "name ../up": (_manifest(name="../up"), "name:"),
    "name absolute": (_manifest(name="/tmp/imagebatch-abs"), "name:"),
    "name backslash": (_manifest(name="..\\up"), "name:"),
    "name NUL": (_manifest(name="ok\0x"), "NUL"),
    "name 300 long": (_manifest(name="a" * 300), "name:"),
    "name uppercase": (_manifest(name="UP"), "name:"),
    **{f"name {k}": (_manifest(name=f"up{c}x"), "name:") for k, c in LOOKALIKES.items()},
    "id ..": (_manifest(job_id=".."), "id"),
    "id .": (_manifest(job_id="."), "id"),
    "id ../up": (_manifest(job_id="../up"), "id"),
    "id absolute": (_manifest(job_id="/etc"), "id"),
    "id backslash": (_manifest(job_id="..\\..\\up"), "id"),
    "id NUL": (_manifest(job_id="fox\0"), "NUL"),
    "id 5000 long": (_manifest(job_id="f" * 5000), "id"),
    **{f"id {k}": (_manifest(job_id=f"up{c}x"), "id") for k, c in LOOKALIKES.items()},
    "path ../": (_manifest(path="../{seed}.{ext}"), "climb out"),
    "path ../../ inside": (_manifest(path="{id}/../../{seed}.{ext}"), "climb out"),
    "path absolute": (_manifest(path="/tmp/{id}/{seed}.{ext}"), "absolute"),
    "path drive": (_manifest(path="C:/{id}/{seed}.{ext}"), "absolute"),
    "path backslash": (_manifest(path="{id}\\{seed}.{ext}"), "not \\"),
    "path backslash ..": (_manifest(path="..\\{seed}.{ext}"), "not \\"),
    "path NUL": (_manifest(path="{id}\0/{seed}.{ext}"), "NUL"),
    **{f"path {k}": (_manifest(path=f"{{id}}{c}{{seed}}.{{ext}}"), "may only hold")
       for k, c in LOOKALIKES.items()},
    "path temp-file prefix": (_manifest(path="{id}/.tmp-{seed}.{ext}"), ".tmp-"),
    "var ..": (_manifest(path="{where}/{seed}.{ext}", matrix={"where": [".."]}), "climbs out"),
    "var .": (_manifest(path="{where}/{seed}.{ext}", matrix={"where": ["."]}), "climbs out"),
    "var makes .tmp-": (_manifest(path="{id}/{where}{seed}.{ext}", matrix={"where": [".tmp-"]}),
                        ".tmp-"),
    "var NUL": (_manifest(matrix={"where": ["a\0b"]}), "NUL"),
    "var 1001 long": (_manifest(matrix={"where": ["x" * 1001]}), "at most 1,000"),
    "var 1000 long in a path": (_manifest(matrix={"where": ["x" * 1000]}), "too long"),
    "var name ../": (_manifest(matrix={"../up": ["a"]}, prompt="a fox"), "not a valid variable"),
    "var collides once safe": (_manifest(matrix={"where": ["a/b", "a\\b"]}), "collides"),
    "var CON": (_manifest(path="{where}/{seed}.{ext}", matrix={"where": ["CON"]}), "Windows"),
    "var ...": (_manifest(path="{where}/{seed}.{ext}", matrix={"where": ["..."]}), "Windows"),
    "id nul.txt": (_manifest(job_id="nul.txt", path="{id}/{seed}.{ext}"), "Windows"),
    "name aux": (_manifest(name="aux"), "Windows"),
}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", list(REFUSED))
def test_manifest_that_climbs_out_is_refused_and_writes_nothing(
        tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    text, words = REFUSED[case]
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text, encoding="utf-8")
    before = snapshot_tree(tmp_path)
    code, _, err = _run(["validate", str(manifest)], capsys)
    assert code == 2, err
    assert words in err, err
    assert "Traceback" not in err
    # run refuses the same, before anything is sent or written (nothing is listening)
    code, _, err = _run(["run", str(manifest), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and words in err and "nothing was sent" in err, err
    assert snapshot_tree(tmp_path) == before


# Values that are accepted but made safe in paths; each must stay inside outputs/<name>/.
SANITISED = {
    "../../escape": "..-..-escape",
    "/etc/passwd": "-etc-passwd",
    "..\\..\\windows": "..-..-windows",
    "C:\\Users": "C--Users",
    "x/../../y": "x-..-..-y",
    "~root": "-root",
    "$HOME": "-HOME",
    "a\u2215b": "a-b",  # division slash
    "c\uff0fd": "c-d",  # fullwidth solidus
    "e\u2044f": "e-f",  # fraction slash
    "\u2024\u2024": "--",  # one dot leaders: look like ..
    "g\uff3ch": "g-h",  # fullwidth reverse solidus
    "\uff41\uff42z": "--z",  # fullwidth letters
    "a\tb\nc": "a-b-c",
}
TAGS = ["<b>bold</b>", '"><script>alert(3)</script>']
XSS_PROMPT = "<script>alert('p')</script> {where} {tag} <img src=x onerror=alert(1)>"
XSS_NEGATIVE = "</p><svg onload=alert(2)><iframe src=javascript:alert(4)>"


class _Tags(html.parser.HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_accepted_hostile_values_stay_inside_and_html_stays_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # things a write outside would land on or next to
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/other").mkdir()
    (tmp_path / "out/other/keep.txt").write_text("another manifest's outputs\n")
    # the manifest's own file name carries markup: it is shown in index.html
    manifest = tmp_path / "m<b>x.yaml"
    text = _manifest(name="hostile", path="{id}/{where}/{tag}-{seed}.{ext}",
                     matrix={"where": list(SANITISED), "tag": TAGS}, prompt=XSS_PROMPT)
    text = text.replace("version: 1\n", "version: 1\nmodel: \"<script>alert('m')</script>\"\n")
    text = text.replace("    output_format: jpeg\n",
                        f"    output_format: jpeg\n    negative_prompt: {_yaml(XSS_NEGATIVE)}\n")
    manifest.write_text(text, encoding="utf-8")
    plan = load(manifest)
    assert len(plan.jobs) == len(SANITISED) * len(TAGS)
    expected = {f"fox/{safe}/{tag}-1.jpg" for safe in SANITISED.values()
                for tag in ("-b-bold--b-", "---script-alert-3---script-")}
    assert {j.path for j in plan.jobs} == expected
    before = snapshot_tree(tmp_path)

    code, _, err = _run(["run", str(manifest), "--out", "out", "--local", "-v"], capsys)
    assert code == 0, err

    after = snapshot_tree(tmp_path)
    changed = {p for p, st in after.items() if before.get(p) != st}
    outside = sorted(p for p in changed if not p.startswith("out/hostile/"))
    assert not outside, outside
    assert (tmp_path / "etc/passwd").read_text() == "root:x:0:0\n"
    images = {p.removeprefix("out/hostile/images/") for p in changed
              if p.startswith("out/hostile/images/")}
    assert images == expected

    page = (tmp_path / "out/hostile/index.html").read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(page)
    names = {tag for tag, _ in parser.tags}
    assert not names & {"script", "svg", "iframe", "object", "embed"}, names
    for tag, attrs in parser.tags:
        for attr, value in attrs:
            assert not attr.startswith("on"), (tag, attr, value)
            if attr in ("src", "href"):
                assert value is not None and not value.lower().startswith(
                    ("javascript:", "data:", "http:", "https:", "//")), (tag, value)
                if tag == "img":
                    assert value.startswith("thumbs/"), value
    # the markup is shown as the text it is
    shown = "".join(parser.text)
    assert "<script>alert('p')</script>" in shown
    assert "<img src=x onerror=alert(1)>" in shown
    assert "<svg onload=alert(2)>" in shown
    assert "<script>alert('m')</script>" in shown
    assert "m<b>x.yaml" in shown
    assert "<b>bold</b>" in shown and '"><script>alert(3)</script>' in shown

"""The two YAML parsers behind manifests: libyaml (PyYAML's C extension) composes what it
accepts, PyYAML's Python parser everything else. A manifest gives the same nodes, the same
places and the same messages whichever of them composed it."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from imagebatch.errors import ManifestError
from imagebatch.planning import manifest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted([*glob.glob(str(ROOT / "manifests" / "*.yaml")),
                 *glob.glob(str(ROOT / "tests" / "manifests" / "*.yaml"))])

# Valid YAML in the shapes manifests take, and the corners where two parsers could place or
# read a value differently: flow and block collections, every scalar style, comments, other
# line breaks, non-ASCII text, anchors and merge keys, document markers. (A text with a tab
# goes to PyYAML's parser: its own test below.)
DOCUMENTS = [
    "version: 1\njobs:\n  - id: a\n    prompt: a fox\n",
    "version: 1\r\njobs:\r\n  - {id: a, prompt: 'a fox', seeds: [1, 2, 3]}\r\n",
    'jobs:\n  - id: "é\\u00e9"\n    prompt: "ünïcödé — 狐狸 🦊 fox"  # a comment\n',
    "prompt: |\n  two\n  lines\nother: >-\n  folded\n  text\n",
    "a: 16:9\nb: yes\nc: 010\nd: ~\ne: 1_000\nf: 0x1F\ng: .5\nh: 2026-12-07\n",
    "base: &b {steps: 30, cfg: 7}\njobs:\n  - <<: *b\n    id: x\n  - *b\n",
    "---\nversion: 1\n...\n",
    "list:\n- a\n-   b\n- - c\n  - d\n",
    "k2: 'it''s'\nk3: \"tab\\there\"\n",
    "a: x\u0085b: y\n",
    "a: x\u2028b: y\n",
    "nested: {a: [1, {b: [2, 3]}], c: {d: e}}\n",
    "prompt: \"a very long line " + "word " * 300 + "\"\n",
    "? complex key\n: value\n",
    "a:    spaced   \nb: trailing   \n",
]


def _tree(node: Node | None) -> Any:
    """Everything of a node tree a manifest reads: kind, tag, style, value and where it
    starts (the place a message gives; where a node ends is not read)."""
    if node is None:
        return None
    here = (type(node).__name__, node.tag, getattr(node, "style", None),
            node.start_mark.line, node.start_mark.column)
    if isinstance(node, MappingNode):
        return here, [(_tree(k), _tree(v)) for k, v in node.value]
    if isinstance(node, SequenceNode):
        return here, [_tree(item) for item in node.value]
    return here, node.value


def _compose(composer: type, text: str) -> tuple[Any, bool]:
    """(the node tree, whether it has aliases) as `composer` composes `text`."""
    loader = composer(text)
    try:
        return _tree(loader.get_single_node()), loader.aliases
    finally:
        loader.dispose()


def _problems(text: str, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What manifest._compose makes of `text`, with libyaml first or PyYAML alone."""
    monkeypatch.setattr(manifest, "_FAST", fast)
    try:
        node, aliases = manifest._compose(text, "m.yaml")
    except ManifestError as exc:
        return [str(p) for p in exc.problems]
    return _tree(node) if not aliases else "aliases", aliases


def test_libyaml_is_there() -> None:
    # PyYAML's wheels carry libyaml: without it every manifest takes the slow path
    assert manifest._FAST


@pytest.mark.parametrize("text", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_the_two_parsers_give_the_same_nodes(text: str) -> None:
    assert _compose(manifest._FastComposer, text) == _compose(manifest._Composer, text)


@pytest.mark.parametrize("path", CORPUS, ids=[Path(p).name for p in CORPUS])
def test_each_manifest_here_composes_alike_or_is_refused_by_both(path: str) -> None:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    loader = manifest._Composer(text)
    try:
        loader.get_single_node()
    except Exception:  # noqa: BLE001 - PyYAML refuses it: libyaml must not take it
        with pytest.raises((yaml.YAMLError, manifest._TooBig, manifest._Unsure)):
            manifest._FastComposer(text).get_single_node()
        return
    if loader.aliases:  # an alias bomb's tree is too big to walk; the composition is shared
        return
    try:
        fast = _compose(manifest._FastComposer, text)
    except manifest._Unsure:  # composed by PyYAML (an empty value)
        return
    assert fast == _compose(manifest._Composer, text)


BROKEN = [
    "version: 1\njobs:\n  - {id: a, prompt: }\n",  # an empty value: PyYAML places it
    "version: 1\njobs:\n  - id: a\n    prompt:\n",
    "version: 1\njobs: [\n",  # unclosed
    "version: 1\nprompt: 'unclosed\n",
    "a: b: c\n",
    "a: 1\n---\nb: 2\n",  # two documents
    "- a\nb: c\n",
    "a: *nowhere\n",
    "a: &x 1\nb: &x 2\nc: *x\n",
    "a: \x07bell\n",  # a control character
    "a: \ufffe\n",
    "\t- tab indented\n",
    "a:\n  - b\n c: d\n",
    "[" * 200 + "]" * 200 + "\n",  # deeper than a manifest may be
    "a: [" + ", ".join(["1"] * 10) + "]\n",
]


@pytest.mark.parametrize("text", [*BROKEN, *DOCUMENTS], ids=range(len(BROKEN) + len(DOCUMENTS)))
def test_a_document_gets_the_same_result_with_libyaml_or_without(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same nodes, or the same problems at the same places in the same words
    assert _problems(text, True, monkeypatch) == _problems(text, False, monkeypatch)


def test_a_tab_after_a_colon_is_refused_as_pythons_parser_refuses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # libyaml takes it; PyYAML's parser, which refused it before libyaml was used, still does
    text = "version: 1\njobs:\n  - id:\ta\n    prompt: x\n"
    manifest._FastComposer(text).get_single_node()
    assert _problems(text, True, monkeypatch) == _problems(text, False, monkeypatch) == [
        "m.yaml:3:8: YAML syntax error: found character '\\t' that cannot start any token "
        "(while scanning for the next token)"]


def test_random_texts_both_parsers_take_compose_alike() -> None:
    # texts of YAML's own characters: where both parsers take one, the nodes are the same
    import random

    rng = random.Random(20261207)
    alphabet = [*"ab:-,[]{}#&*!|>'\"%@` ?\n\n  \\.0~", "- ", ": ", "\n  ", "\n- ", "é", "\r\n",
                "---", "...", "<<"]
    compared = 0
    for _ in range(4000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        try:
            slow = _compose(manifest._Composer, text)
            fast = _compose(manifest._FastComposer, text)
        except (yaml.YAMLError, manifest._TooBig, manifest._Unsure):
            continue  # refused by one: _compose asks PyYAML's parser
        if not slow[1]:
            assert fast == slow, repr(text)
            compared += 1
    assert compared > 400


def test_a_valid_manifest_is_composed_by_libyaml_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(text: str) -> None:
        raise AssertionError("PyYAML's Python parser composed a valid manifest")

    monkeypatch.setattr(manifest, "_Composer", refused)
    spec = manifest.load_manifest(str(ROOT / "manifests" / "example.yaml"))
    assert spec.jobs

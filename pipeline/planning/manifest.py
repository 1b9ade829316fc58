"""YAML -> validated Manifest: the only YAML reader; every problem with file, line and column.

The file is composed into PyYAML nodes (never constructed into Python objects), so every
value keeps its source mark, duplicate keys can be seen, and scalars keep their source text:
unquoted `16:9` (YAML 1.1 reads an integer, 969) or `yes` (a boolean) are taken as the
text the user wrote wherever a string is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's parser, in PyYAML's wheels for every common platform
    from yaml.cyaml import CParser

    _FAST = True
except ImportError:  # PyYAML built without it: the Python parser alone, as fast as before
    class CParser:  # type: ignore[no-redef]
        """Stands in for libyaml's parser where there is none; never made (_FAST is False)."""

    _FAST = False

from ..errors import ManifestError, Problem, UsageError, text_problem
from . import apispec, config, promptlock, stabilityform
from .plan import (
    BUILTINS,
    DEFAULT_EXPORT_PATH,
    EXPORT_FORMATS,
    EXPORT_PLACEHOLDERS,
    Axis,
    ExportSettings,
    JobSpec,
    Loc,
    Manifest,
    OutputSettings,
    Plan,
    Seeds,
    draw,
    draw_seed,
    expand,
    in_shard,
    windows_problem,
)

DEFAULT_MAX_JOBS = 5000
MAX_FILE_BYTES = 8 * 1024 * 1024  # a manifest is text a person writes; refuse what is not
MAX_NODES = 300_000  # node visits; stops alias bombs ("billion laughs") in milliseconds
MAX_DEPTH = 100  # nesting of lists and mappings; a manifest needs 6, Python's stack ~500
#: How a run is sent to Stability, said wherever a manifest asks for what only it takes: the
#: provider comes from the environment, so a manifest planned without it is Heroku's.
CHOOSE_PROVIDER = ("the provider comes from the environment: set DIFFUSION_PROVIDER=stability "
                   "(or STABILITY_API_KEY, or a URL on stability.ai) for every command, CI's "
                   "included")
MAX_MERGE_DEPTH = 100  # merge keys (`<<: *a`) that merge mappings that merge...

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_ID = re.compile(r"[A-Za-z0-9._-]+\Z")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TEMPLATE_TEXT = re.compile(r"[A-Za-z0-9._/ -]*\Z")
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
# a plain scalar YAML 1.1 does not read as a number only because of a leading zero (09)
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+\Z")

TOP_KEYS = ("version", "name", "model", "defaults", "seeds", "output", "jobs", "exports")
OUTPUT_KEYS = ("path", "thumbnail", "sheet")
SHEET_KEYS = ("label", "per_page")
TEXT_FIELDS = ("prompt", "negative_prompt")
ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "aspect_ratio": apispec.ASPECT_RATIOS,
    "size": apispec.SIZES,
    "output_format": apispec.OUTPUT_FORMATS,
}
DEFAULT_FIELDS = ("prompt", "negative_prompt", "aspect_ratio", "size", "output_format", "seed",
                  "image", "strength")
JOB_KEYS = ("id", *DEFAULT_FIELDS, "seeds", "matrix", "zip", "prompts")
BRIEF_KEYS = ("brief", "count", "vary", "keep")
#: `{values: [...] | from: FILE, draw: N, seed: S}`: an axis's values drawn from a list or file
DRAW_KEYS = ("values", "from", "draw", "seed")
MAX_VARIABLE_CHARS = 1000  # a variable's value, whether written or read from a file
AXIS_FIELDS = ("prompt", "negative_prompt", "aspect_ratio", "size", "output_format")
EXPORT_KEYS = ("name", "from", "path", "width", "size", "fit", "focus", "format", "quality",
               "background", "upscale", "metadata")
MAX_EXPORTS = 16
MAX_WIDTHS = 32  # a srcset needs a handful; the cap keeps a typo from making thousands of files
MAX_EXPORT_SIDE = 8192  # pixels, of a width or either side of a size
FITS = ("cover", "contain")
METADATA = ("keep", "strip")
_BOX = re.compile(r"([0-9]+)x([0-9]+)\Z")


class _Budget(Exception):
    """The document expands to more nodes than a manifest can sensibly have."""


class _TooBig(Exception):
    """The document nests too deep or holds too many values to be composed."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _Counting:
    """compose_node for a composer that counts what it composes: PyYAML's composer recurses
    once per level and keeps every node, so depth and size are capped here, where the place
    is still known. Each composer starts from these counts (its own once it counts)."""

    depth: int = 0
    nodes: int = 0
    aliases: bool = False

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """One node, refused past MAX_DEPTH levels or MAX_NODES nodes."""
        if self.check_event(AliasEvent):  # type: ignore[attr-defined]
            self.aliases = True
            return super().compose_node(parent, index)  # type: ignore[misc]
        mark = self.peek_event().start_mark  # type: ignore[attr-defined]
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(mark, f"the document has more than {MAX_NODES:,} values; a manifest "
                                "may hold at most that many (a long run of seeds can be "
                                "written {start: S, count: N})")
        if self.depth >= MAX_DEPTH:
            raise _TooBig(mark, f"lists and mappings are nested more than {MAX_DEPTH} levels "
                                "deep; a manifest needs a handful")
        self.depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self.depth -= 1


class _Composer(_Counting, yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's own reader, scanner and parser, in Python: the exact place and wording of
    every error, and the judge of what is valid (see _compose)."""


class _FastComposer(_Counting, Composer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
    """The same composition over libyaml's scanner and parser (PyYAML's C extension), a tenth
    of the time: about 1 against 8 ms for the example manifest. Composer precedes CParser so
    that its Python composition, which counts, is the one used; plain scalars get PyYAML's
    style (None, where libyaml gives '')."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def compose_scalar_node(self, anchor: str | None) -> Node:
        """A scalar node, its style as PyYAML's parser gives it."""
        node: Node = super().compose_scalar_node(anchor)
        if node.style == "":
            if node.value == "":
                # an empty value (`prompt:`): libyaml puts it where the next token starts,
                # PyYAML where the `:` ends, and a message points at it
                raise _Unsure
            node.style = None
        return node


class _Unsure(Exception):
    """libyaml's nodes might not be placed as PyYAML places them: compose with PyYAML."""


def _loc(node: Node) -> Loc:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return {
        _INT_TAG: "an integer", _BOOL_TAG: "a boolean", _NULL_TAG: "empty (null)",
        _FLOAT_TAG: "a number",
    }.get(node.tag, "text")


def _ratio(text: str) -> float:
    """`W:H` (or `WxH`) as width / height; 0.0 when it is not two positive numbers."""
    parts = re.split(r"[:x/]", text.strip(), maxsplit=1)
    try:
        w, h = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        return 0.0
    return w / h if w > 0 and h > 0 and math.isfinite(w / h) else 0.0


def _nearest_ratio(text: str, allowed: Sequence[str]) -> str | None:
    """The allowed aspect ratio closest in shape to `text` (`16:10` -> `16:9`), or a close
    spelling when `text` is no ratio at all."""
    wanted = _ratio(text)
    if wanted <= 0:
        close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.6)
        return close[0] if close else None
    return min(allowed, key=lambda r: abs(math.log(_ratio(r) / wanted)))


class _Checker:
    """Walks the node tree once, collecting every problem instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.visits = 0
        self.merging: list[Node] = []  # mappings whose merge keys are being followed

    def add(self, node: Node | Loc, path: str, message: str) -> None:
        line, col = node if isinstance(node, tuple) else _loc(node)
        self.problems.append(Problem(self.source, line, col, path, message))

    def tick(self) -> None:
        self.visits += 1
        if self.visits > MAX_NODES:
            raise _Budget

    # ---- containers -------------------------------------------------------------------

    def mapping(
        self, node: Node, path: str, allowed: tuple[str, ...] | None
    ) -> dict[str, tuple[Node, Node]] | None:
        """key -> (key node, value node); duplicate and unknown keys reported; merges applied."""
        self.tick()
        if not isinstance(node, MappingNode):
            self.add(node, path, f"must be a mapping (key: value), got {_kind(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            self.tick()
            if knode.tag == _MERGE_TAG:  # `<<: *base` fills keys not written here
                for source in (vnode.value if isinstance(vnode, SequenceNode) else [vnode]):
                    # an alias is the anchored node itself, so a mapping can merge itself
                    # (`&d {<<: *d}`): following it would never end
                    if source is node or any(source is n for n in self.merging):
                        self.add(knode, path, "merges itself: its `<<:` names this mapping "
                                              "or one that merges it; remove that merge key")
                        continue
                    if len(self.merging) >= MAX_MERGE_DEPTH:
                        self.add(knode, path, f"merge keys nested more than {MAX_MERGE_DEPTH} "
                                              "deep; write the keys out")
                        continue
                    self.merging.append(node)
                    try:
                        inner = self.mapping(source, path, allowed)
                    finally:
                        self.merging.pop()
                    for k, pair in (inner or {}).items():
                        merged.setdefault(k, pair)
                continue
            if not isinstance(knode, ScalarNode):
                self.add(knode, path, "keys must be plain names")
                continue
            key = knode.value
            where = f"{path}.{key}" if path else key
            if key in out:
                first = out[key][0].start_mark.line + 1
                self.add(knode, where, f"duplicate key {key!r} (first set on line {first}); "
                                       "YAML would silently keep only the last one")
                continue
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    f"; allowed: {', '.join(allowed)}"
                self.add(knode, where, f"unknown key {key!r}{hint}")
                continue
            out[key] = (knode, vnode)
        for k, pair in merged.items():
            out.setdefault(k, pair)
        return out

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        """The items of a list, or None (reported) when it is not one."""
        self.tick()
        if not isinstance(node, SequenceNode):
            self.add(node, path, f"must be a list, got {_kind(node)}")
            return None
        return list(node.value)

    # ---- scalars ----------------------------------------------------------------------

    def text(self, node: Node, path: str, *, empty_ok: bool = False) -> str | None:
        """A string, taken as the source text the user wrote (so 16:9 and yes stay text)."""
        self.tick()
        if not isinstance(node, ScalarNode):
            self.add(node, path, f"must be text, got {_kind(node)}")
            return None
        if node.tag == _NULL_TAG and node.style is None and node.value in ("", "~", "null",
                                                                            "Null", "NULL"):
            if empty_ok and node.value == "":
                return ""
            self.add(node, path, "is empty; write the text (quote it if it starts with "
                                 "a special character)")
            return None
        value: str = node.value  # a scalar node's value is its source text
        if "\x00" in value:
            self.add(node, path, "contains a NUL character")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # YAML's "\ud83d\ude00" escapes give two lone surrogates: join pairs, refuse the rest
            try:
                value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                self.add(node, path, "contains an unpaired surrogate escape (\\uD800..\\uDFFF); "
                                     "write the character itself")
                return None
        if not value and not empty_ok:
            self.add(node, path, "is empty")
            return None
        return value

    def integer(self, node: Node, path: str, lo: int, hi: int, what: str = "") -> int | None:
        """An integer in [lo, hi]; booleans, fractions and YAML 1.1's octal and base 60 are
        refused."""
        self.tick()
        if not _intlike(node):
            shown = f" {node.value!r}" if isinstance(node, ScalarNode) and node.value else ""
            self.add(node, path, f"must be a whole number{what}, got {_kind(node)}{shown}")
            return None
        value, why = _yaml_int(node.value)
        if value is None:
            self.add(node, path, why)
            return None
        if not lo <= value <= hi:
            self.add(node, path, f"{value} is out of range {lo}..{hi:,}")
            return None
        return value

    def number(self, node: Node, path: str, lo: float, hi: float) -> float | None:
        """A number (whole or not) in [lo, hi]."""
        self.tick()
        if not (isinstance(node, ScalarNode) and node.tag in (_INT_TAG, _FLOAT_TAG)):
            shown = f" {node.value!r}" if isinstance(node, ScalarNode) and node.value else ""
            self.add(node, path, f"must be a number, got {_kind(node)}{shown}")
            return None
        try:
            value = float(node.value.replace("_", ""))
        except ValueError:
            value = float("nan")
        if not lo <= value <= hi:  # also refuses .nan and .inf
            self.add(node, path, f"{node.value} is out of range {lo:g}..{hi:g}")
            return None
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        """true or false; YAML 1.1's yes/no/on/off are refused (other tools read them as text)."""
        self.tick()
        if isinstance(node, ScalarNode) and node.tag == _BOOL_TAG:
            spelled: str = node.value.lower()  # a scalar node's value is its source text
            if spelled in ("true", "false"):
                return spelled == "true"
            self.add(node, path, f"write true or false, not {node.value!r} (a YAML 1.1 "
                                 "spelling that other YAML readers take as text)")
            return None
        shown = f" {node.value!r}" if isinstance(node, ScalarNode) and node.value else ""
        self.add(node, path, f"must be true or false, got {_kind(node)}{shown}")
        return None

    def choice(self, node: Node, path: str, allowed: tuple[str, ...]) -> str | None:
        """One of `allowed`, with a did-you-mean."""
        value = self.text(node, path)
        if value is None:
            return None
        if value not in allowed:
            close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.add(node, path, f"{value!r} is not one of {', '.join(allowed)}{hint}")
            return None
        return value

    def enum(self, node: Node, path: str, field: str,
             allowed: tuple[str, ...] | None = None) -> str | None:
        """One of a request field's allowed values, with a hint for YAML's number traps."""
        value = self.text(node, path)
        if value is None:
            return None
        allowed = allowed or ENUM_FIELDS[field]
        if value not in allowed:
            if field == "aspect_ratio":
                # ratios read best from wide to tall, and the nearest shape is the one meant
                shown = sorted(allowed, key=lambda r: -_ratio(r))
                near = _nearest_ratio(value, allowed)
                hint = f" (the nearest is {near!r})" if near else ""
            else:
                shown = list(allowed)
                close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.add(node, path, f"{value!r} is not one of {', '.join(shown)}{hint}")
            return None
        return value


def _intlike(node: Node) -> bool:
    """An integer scalar, or a plain one that is not only because of a leading zero (09)."""
    return isinstance(node, ScalarNode) and (
        node.tag == _INT_TAG
        or (node.tag == _STR_TAG and node.style is None and bool(_LEADING_ZERO.match(node.value))))


def _yaml_int(text: str) -> tuple[int | None, str]:
    """An integer's value, or why it is refused.

    YAML 1.1 (PyYAML) reads 010 as octal 8 and 1:30 as base 60, 90; YAML 1.2 and people read
    010 as 10 and 1:30 as no number at all. No reading is right for everyone, so both are
    refused with what YAML 1.1 makes of them. 0x1F, 0b101 and 1_000 mean one thing and stay.
    """
    sign = -1 if text.startswith("-") else 1
    digits = (text[1:] if text.startswith(("-", "+")) else text).replace("_", "")
    try:
        if re.fullmatch(r"0b[01]+", digits):
            return sign * int(digits, 0), ""
        if re.fullmatch(r"0x[0-9a-fA-F]+", digits):
            return sign * int(digits, 0), ""
        if re.fullmatch(r"[0-9]+", digits) and not (len(digits) > 1 and digits[0] == "0"):
            return sign * int(digits), ""
        if re.fullmatch(r"0[0-9]+", digits):
            decimal = sign * int(digits)
            if re.fullmatch(r"[0-7]+", digits):
                octal = sign * int(digits, 8)
                other = f" (or {octal} if octal was meant)" if octal != decimal else ""
                return None, (f"{text} has a leading zero, so YAML 1.1 reads it as an octal "
                              f"number ({octal}); write {decimal} without the leading "
                              f"zero{other}")
            return None, (f"{text} has a leading zero, which YAML 1.1 keeps for octal numbers, "
                          f"so it is not read as a number; write {decimal} without the "
                          "leading zero")
        if re.fullmatch(r"[0-9]+(?::[0-9]+)+", digits):
            value = 0
            for part in digits.split(":"):
                value = value * 60 + int(part)
            return None, (f"{text} is a base 60 number in YAML 1.1 ({sign * value}); write "
                          f"{sign * value} if that is the number meant")
    except ValueError:  # more digits than int() converts
        return None, f"{text[:40]!r} is far out of range"
    return None, f"{text[:40]!r} is not a whole number"


def _compose(text: str, source: str) -> tuple[Node | None, bool]:
    """Parse YAML into nodes, and whether it has aliases; errors become a located Problem.

    libyaml composes first when PyYAML has it. Anything it refuses is composed again by
    PyYAML's Python parser, which says where and what is wrong in its own words (or, where
    the two disagree, takes what it accepts): the messages are the same whichever parser
    is installed. So is a text with a character PyYAML's reader refuses, or with a tab,
    which libyaml takes after a `:` where PyYAML does not. What libyaml takes and PyYAML
    refuses otherwise is exotic (a block scalar's `|` or `>` followed at once by `#`);
    `docs/manifest.md` says so."""
    if _FAST and "\t" not in text and not yaml.reader.Reader.NON_PRINTABLE.search(text):
        fast = None
        try:
            fast = _FastComposer(text)
            return fast.get_single_node(), fast.aliases
        except (yaml.YAMLError, _TooBig, _Unsure):
            pass  # the Python parser below finds it again, and says it in its words
        finally:
            if fast is not None:
                fast.dispose()
    loader = None
    try:
        loader = _Composer(text)  # its reader checks every character first
        return loader.get_single_node(), loader.aliases
    except _TooBig as exc:
        raise ManifestError([Problem(source, exc.mark.line + 1, exc.mark.column + 1, "",
                                     exc.message)]) from None
    except yaml.reader.ReaderError as exc:
        # the reader reports a character offset into the text; people need line and column
        line, col = _line_col(text, exc.position)
        char = text[exc.position] if 0 <= exc.position < len(text) else ""
        code = ord(char) if char else exc.character
        kind = "a control character" if unicodedata.category(chr(code)) == "Cc" \
            else "not a printable character"
        raise ManifestError([Problem(source, line, col, "", f"the character U+{code:04X} "
                                                            f"({kind}) is not allowed in YAML; "
                                                            "remove it")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and any(e in (exc.problem or "") for e in ("end of stream",
                                                                     "<stream end>")):
            # an unclosed quote or bracket: where it was opened, not the end of the file
            mark = exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or "not valid YAML"
        context = f" ({exc.context})" if exc.context else ""
        if "expected a single document" in str(exc) or "but found another document" in str(exc):
            what = "only one YAML document per manifest (remove the second '---')"
            context = ""
        raise ManifestError(
            [Problem(source, line, col, "", f"YAML syntax error: {what}{context}")]) from None
    except yaml.YAMLError as exc:
        what = " ".join(str(exc).split())
        raise ManifestError([Problem(source, 1, 1, "", f"not valid YAML: {what}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _line_col(text: str, position: int) -> Loc:
    """1-based line and column of a character offset, counting line breaks as PyYAML does."""
    head = text[:position]
    line, start = 1, 0
    for m in re.finditer(r"\r\n|[\r\n\x85\u2028\u2029]", head):
        line, start = line + 1, m.end()
    return line, position - start + 1


def _read(path: str) -> str:
    p = Path(path)
    try:
        if p.is_dir():
            raise UsageError(f"{path} is a folder, not a manifest file")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:  # a regular file says its size: refuse it unread
            raise ManifestError([Problem(path, 1, 1, "", f"is {size:,} bytes; a manifest may "
                                                         f"be at most {MAX_FILE_BYTES:,}")])
        # a device or a pipe says nothing (/dev/zero never ends): read one byte past the cap,
        # in small pieces (one read of the cap would hold 8 MB for every small file)
        chunks: list[bytes] = []
        total = 0
        with p.open("rb") as f:
            while total <= MAX_FILE_BYTES:
                chunk = f.read(min(1 << 16, MAX_FILE_BYTES + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        data = b"".join(chunks)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such manifest file{_nearby_manifest(p)}") from None
    except PermissionError:
        raise UsageError(f"{path}: cannot read the file (permission denied)") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the file ({exc.strerror})") from None
    return _decode(data, path)


def _decode(data: bytes, source: str) -> str:
    """A manifest's bytes as text, or a located ManifestError (too big, not UTF-8)."""
    text, problem = text_problem(data, source, MAX_FILE_BYTES, "a manifest")
    if problem is not None:
        raise ManifestError([problem])
    return text


def _template(c: _Checker, node: Node, path: str, known: set[str],
              check_text: Callable[[str, bool], str | None] | None = None) -> str | None:
    """A format template using only {name} placeholders from `known`; {{ }} are braces."""
    text = c.text(node, path)
    if text is None:
        return None
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        c.add(node, path, f"{text!r}: {exc}; write {{{{ and }}}} for literal braces")
        return None
    for i, (literal, field, spec, conversion) in enumerate(parts):
        if check_text is not None:
            bad = check_text(literal, i == 0)
            if bad:
                c.add(node, path, f"{text!r}: {bad}")
                return None
        if field is None:
            continue
        if spec or conversion or not _VARIABLE.match(field):
            c.add(node, path, f"{text!r}: '{{{field}}}' is not a placeholder; use {{name}} "
                              "only (write {{ and }} for literal braces)")
            return None
        if field not in known:
            close = difflib.get_close_matches(field, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {{{close[0]}}}?" if close else ""
            c.add(node, path, f"{text!r}: unknown placeholder {{{field}}}{hint} "
                              f"(known: {', '.join('{' + k + '}' for k in sorted(known))}; "
                              "write {{ and }} for literal braces)")
            return None
    return text


def _path_text(literal: str, first: bool, root: str = "the images folder") -> str | None:
    if "\\" in literal:
        return "use / to separate folders, not \\"
    if first and (literal.startswith("/") or re.match(r"[A-Za-z]:", literal)):
        return f"must be relative to {root}, not absolute"
    if ".." in literal.split("/"):
        return "must not climb out with '..'"
    if not _TEMPLATE_TEXT.match(literal):
        bad = sorted(set(re.sub(r"[A-Za-z0-9._/ -]", "", literal)))
        return f"may only hold letters, digits, . _ - / and placeholders, not {''.join(bad)!r}"
    return None


def _export_path_text(literal: str, first: bool) -> str | None:
    return _path_text(literal, first, "the export root")


def _colour(text: str) -> tuple[int, int, int] | None:
    """#rgb, #rrggbb or a CSS colour name as (r, g, b); None when it is none of these."""
    from PIL import ImageColor  # only when a manifest sets a colour

    if text.startswith("#") and not re.fullmatch(r"#(?:[0-9A-Fa-f]{3}){1,2}", text):
        return None  # #rgba / #rrggbbaa: a background is opaque
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        return None
    return (rgb[0], rgb[1], rgb[2]) if len(rgb) == 3 else None


def _sent_length(text: str) -> int:
    """Characters of a prompt as sent, placeholders not counted: {{ and }} become one brace,
    and each {name} is filled in (its length is judged once the values are known)."""
    if "{" not in text and "}" not in text:
        return len(text)
    try:
        return sum(len(literal) for literal, _, _, _ in string.Formatter().parse(text))
    except ValueError:  # a lone brace: reported with the placeholders, counted as written
        return len(text)


class _Loader:
    """Builds a Manifest from nodes, collecting all problems."""

    def __init__(self, source: str, default_model: str, max_jobs: int,
                 providers: tuple[apispec.Provider, ...] | None = None,
                 read_input: Callable[[str], bytes] | None = None,
                 briefs_only: bool = False) -> None:
        self.c = _Checker(source)
        # `expand` reads a manifest for its briefs before their prompts exist: then a brief
        # without a lock entry is no problem (it gets stand-in prompts)
        self.briefs_only = briefs_only
        self.briefs: list[promptlock.Brief] = []
        self._lock: dict[str, promptlock.Entry] | None = None
        self.source = source
        # reads an input image named relative to the manifest (a file at a git revision for
        # `diff`); None: the file beside the manifest on disk
        self.read_input = read_input
        self.providers = providers or (apispec.default_provider(),)
        # the output formats every provider of the run makes
        self.formats = tuple(f for f in apispec.ALL_OUTPUT_FORMATS
                             if all(f in p.output_formats for p in self.providers))
        self.image_files: dict[str, str] = {}  # "sha256:..." -> the input image's file
        # "sha256:..." -> (its size in bytes, its format, where it was last written)
        self.image_info: dict[str, tuple[int, str, Loc]] = {}
        self.default_keys: set[str] = set()  # the fields written under defaults:
        self.default_model = default_model
        self.max_jobs = max_jobs
        self.export_paths: list[tuple[str, str, Loc]] = []  # (template, field, loc) to check
        self.export_name: tuple[str, Loc] | None = None  # of the entry being read
        self.name = ""  # the manifest's name, once read: default draw seeds derive from it

    def seeds(self, node: Node, path: str) -> Seeds | None:
        c = self.c
        hint = "seed 0 lets the server pick at random, which cannot be reproduced; " \
               "use {random: N} for N reproducible random seeds"
        if _intlike(node):
            value = c.integer(node, path, 0, apispec.MAX_SEED)
            if value == 0:
                c.add(node, path, hint)
                return None
            return None if value is None else Seeds(values=(value,))
        if isinstance(node, SequenceNode):
            items = node.value
            if not items:
                c.add(node, path, "is an empty list; give at least one seed")
                return None
            values: list[int] = []
            seen: dict[int, int] = {}
            for i, item in enumerate(items):
                v = c.integer(item, f"{path}[{i}]", 0, apispec.MAX_SEED)
                if v == 0:
                    c.add(item, f"{path}[{i}]", hint)
                elif v is not None:
                    if v in seen:
                        c.add(item, f"{path}[{i}]", f"seed {v} is already {path}[{seen[v]}]")
                    seen[v] = i
                    values.append(v)
            return Seeds(values=tuple(values)) if len(values) == len(items) else None
        if isinstance(node, MappingNode):
            m = c.mapping(node, path, ("start", "count", "random"))
            if m is None:
                return None
            if "random" in m:
                if len(m) > 1:
                    c.add(node, path, "{random: N} takes no other keys")
                    return None
                n = c.integer(m["random"][1], f"{path}.random", 1, 10_000_000)
                return None if n is None else Seeds(random=n)
            if "start" not in m or "count" not in m:
                c.add(node, path, "a range of seeds needs both start and count, "
                                  "e.g. {start: 100, count: 4}")
                return None
            start = c.integer(m["start"][1], f"{path}.start", 0, apispec.MAX_SEED)
            count = c.integer(m["count"][1], f"{path}.count", 1, apispec.MAX_SEED)
            if start == 0:
                c.add(m["start"][1], f"{path}.start", hint)
                return None
            if start is None or count is None:
                return None
            if start + count - 1 > apispec.MAX_SEED:
                c.add(node, path, f"the last seed, {start + count - 1:,}, is over the "
                                  f"maximum {apispec.MAX_SEED:,}")
                return None
            return Seeds(start=start, count=count)
        c.add(node, path, f"seeds must be a number, a list, {{start: S, count: N}} or "
                          f"{{random: N}}, got {_kind(node)}")
        return None

    def lacking(self, name: str) -> str | None:
        """The name of the first provider of the run without the request field `name`, or
        None."""
        return next((p.name for p in self.providers if name not in p.fields), None)

    def provider_field(self, name: str, node: Node, path: str) -> bool:
        """Whether every provider of the run has `name`; else a problem at `node`."""
        provider = self.lacking(name)
        if provider is None:
            return True
        hint = {"size": "; set aspect_ratio instead (the same nine shapes)",
                "image": f"; image-to-image needs a stability backend ({CHOOSE_PROVIDER})",
                "strength": f"; image-to-image needs a stability backend ({CHOOSE_PROVIDER})",
                }.get(name, "")
        self.c.add(node, path, f"the {provider} provider has no `{name}` field, and this run "
                               f"sends to it{hint}")
        return False

    def output_format(self, node: Node, path: str) -> str | None:
        """`output_format`: one every provider of the run makes; a format only another
        provider makes says which provider this run was planned for, and why."""
        value = self.c.text(node, path)
        if value in apispec.ALL_OUTPUT_FORMATS and value not in self.formats:
            lacking = next(p for p in self.providers if value not in p.output_formats)
            self.c.add(node, path, f"the {lacking.name} provider makes only "
                                   f"{', '.join(lacking.output_formats)}, and this "
                                   f"run sends to it; {value!r} needs the stability provider "
                                   f"({CHOOSE_PROVIDER})")
            return None
        return self.c.enum(node, path, "output_format", self.formats)

    def image(self, node: Node, path: str) -> str | None:
        """An input image, a file relative to the manifest: "sha256:<hex>" of its bytes."""
        c = self.c
        value = c.text(node, path)
        if value is None:
            return None
        file = Path(self.source).parent / value
        try:
            if self.read_input is not None:
                data = self.read_input(value)
            else:
                with open(file, "rb") as fh:
                    data = fh.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            c.add(node, path, f"cannot read the input image {value!r} (relative to the "
                              f"manifest): {exc.strerror or exc}")
            return None
        if len(data) > MAX_INPUT_BYTES:
            c.add(node, path, f"the input image {value!r} is over {MAX_INPUT_BYTES:,} bytes, "
                              "more than a whole Stability request may be (10 MiB, the image "
                              f"in it): shrink it ({stabilityform.SHRINK})")
            return None
        problem = stabilityform.input_image_problem(data)
        if problem:
            c.add(node, path, f"the input image {value!r} {problem}")
            return None
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.image_files[digest] = str(file)
        self.image_info[digest] = (len(data), stabilityform.input_format(data), _loc(node))
        return digest

    def field(self, name: str, node: Node, path: str) -> Any:
        """One request field's value, validated like the API would."""
        c = self.c
        if name == "output_format":
            return self.output_format(node, path)
        if name == "strength":
            return c.number(node, path, 0.0, 1.0)
        if name == "image":
            return self.image(node, path)
        if name in ENUM_FIELDS:
            return c.enum(node, path, name)
        value = c.text(node, path, empty_ok=(name == "negative_prompt"))
        if value is None:
            return None
        sent = _sent_length(value)
        if sent > apispec.MAX_PROMPT_CHARS:
            how = "" if sent == len(value) else " as sent ({{ and }} are one brace each)"
            c.add(node, path, f"is {sent:,} characters{how}; the API allows at most "
                              f"{apispec.MAX_PROMPT_CHARS:,}")
            return None
        return value

    def fields(self, m: dict[str, tuple[Node, Node]], path: str,
               seeds_node: Node | None) -> tuple[dict[str, Any], Seeds | None, Node | None]:
        """Request fields of a defaults block or a job, and its seeds (`seed` or `seeds`)."""
        out: dict[str, Any] = {}
        for name in DEFAULT_FIELDS:
            if name == "seed" or name not in m:
                continue
            if not self.provider_field(name, m[name][0], f"{path}.{name}" if path else name):
                continue
            value = self.field(name, m[name][1], f"{path}.{name}" if path else name)
            if value is not None:
                out[name] = value
        if "size" in out and "aspect_ratio" in out and \
                apispec.SIZE_ASPECTS[out["size"]] != out["aspect_ratio"]:
            self.c.add(m["size"][1], f"{path}.size" if path else "size",
                       f"size {out['size']} is {apispec.SIZE_ASPECTS[out['size']]}, but "
                       f"aspect_ratio is {out['aspect_ratio']}; set one of them")
        seeds = None
        if "seed" in m and seeds_node is not None:
            self.c.add(m["seed"][0], f"{path}.seed" if path else "seed",
                       "set either seed or seeds, not both")
        elif "seed" in m:
            seeds_node = m["seed"][1]
        if seeds_node is not None:
            seeds = self.seeds(seeds_node, f"{path}.seeds" if path else "seeds")
        return out, seeds, seeds_node

    def axis_list(self, name: str, node: Node, where: str,
                  is_field: bool) -> tuple[str, ...] | None:
        """An axis's values written as a YAML list, each checked; None when one is wrong."""
        c = self.c
        items = c.sequence(node, where)
        if items is None:
            return None
        if not items:
            c.add(node, where, "is an empty list; give at least one value")
            return None
        ok = True
        values: list[str] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            ipath = f"{where}[{i}]"
            if is_field:
                v = self.field(name, item, ipath)
            else:
                v = c.text(item, ipath)
                if v is not None and len(v) > MAX_VARIABLE_CHARS:
                    c.add(item, ipath, f"is {len(v):,} characters; a variable value may "
                                       f"be at most {MAX_VARIABLE_CHARS:,}")
                    v = None
            if v is None:
                ok = False
                continue
            if v in seen:
                c.add(item, ipath, f"{v!r} is already {where}[{seen[v]}]")
                ok = False
            seen[v] = i
            values.append(v)
        return tuple(values) if ok else None

    def drawn(self, name: str, node: Node, where: str, is_field: bool,
              job_id: str | None) -> tuple[str, ...] | None:
        """`{values: [...] | from: FILE, draw: N, seed: S}`: the axis's values, all of them
        or N drawn without replacement (seeded, so the plan is the same on every run)."""
        c = self.c
        m = c.mapping(node, where, DRAW_KEYS)
        if m is None:
            return None
        if ("values" in m) == ("from" in m):
            c.add(node, where, "give the values as a list, or as {values: [...]} or "
                               "{from: FILE} (one value a line), each with an optional "
                               "draw: N and seed: S")
            return None
        count = seed = None
        if "draw" in m:
            count = c.integer(m["draw"][1], f"{where}.draw", 1, 1_000_000)
            if count is None:
                return None
        if "seed" in m:
            seed = c.integer(m["seed"][1], f"{where}.seed", 1, apispec.MAX_SEED)
            if seed is None:
                return None
        if "values" in m:
            values = self.axis_list(name, m["values"][1], f"{where}.values", is_field)
        else:
            values = self.values_file(name, m["from"][1], f"{where}.from", is_field)
        if values is None:
            return None
        if count is not None and count > len(values):
            c.add(m["draw"][1], f"{where}.draw", f"draws {count:,} values, but the list has "
                                                 f"only {len(values):,}; draw at most "
                                                 f"{len(values):,} (or leave draw out for "
                                                 "all of them)")
            return None
        if count is None:
            return values
        if seed is None:
            seed = draw_seed(self.name, job_id or "", name)
        return draw(values, count, seed)

    def values_file(self, name: str, node: Node, where: str,
                    is_field: bool) -> tuple[str, ...] | None:
        """The values of a file relative to the manifest, one a line; blank lines and lines
        starting with # are skipped. Problems in it are located in that file."""
        c = self.c
        relative = c.text(node, where)
        if relative is None:
            return None
        problem = _path_text(relative, True, "the manifest's folder")
        if problem:
            c.add(node, where, f"{relative!r}: {problem}")
            return None
        file = Path(self.source).parent / relative
        try:
            if self.read_input is not None:
                data = self.read_input(relative)
            else:
                with open(file, "rb") as fh:
                    data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            c.add(node, where, f"cannot read the values file {relative!r} (relative to the "
                               f"manifest): {exc.strerror or exc}")
            return None
        text, bad = text_problem(data, str(file), MAX_FILE_BYTES, "a values file")
        if bad is not None:
            c.problems.append(bad)
            return None
        values: list[str] = []
        seen: dict[str, int] = {}
        ok = True
        for number, line in enumerate(text.splitlines(), 1):
            value = line.strip()
            if not value or value.startswith("#"):
                continue
            column = line.index(value[0]) + 1

            def add(message: str, number: int = number, column: int = column) -> None:
                c.problems.append(Problem(str(file), number, column, where, message))

            why = self.value_problem(name, value, is_field)
            if why:
                add(why)
                ok = False
            elif value in seen:
                add(f"{value!r} is already on line {seen[value]}; each value once")
                ok = False
            seen.setdefault(value, number)
            values.append(value)
        if not values:
            c.add(node, where, f"the values file {relative!r} has no values (blank lines "
                               "and # comments are skipped); write one value a line")
            return None
        return tuple(values) if ok else None

    def value_problem(self, name: str, value: str, is_field: bool) -> str | None:
        """Why one value read from a file cannot fill the axis `name`, or None."""
        if not is_field:
            if len(value) > MAX_VARIABLE_CHARS:
                return (f"is {len(value):,} characters; a variable value may be at most "
                        f"{MAX_VARIABLE_CHARS:,}")
            return None
        if name in ENUM_FIELDS:
            allowed = self.formats if name == "output_format" else ENUM_FIELDS[name]
            return None if value in allowed else f"{value!r} is not one of {', '.join(allowed)}"
        if _sent_length(value) > apispec.MAX_PROMPT_CHARS:
            return (f"is {_sent_length(value):,} characters; the API allows at most "
                    f"{apispec.MAX_PROMPT_CHARS:,}")
        return None

    def brief_axis(self, node: Node, path: str, job_id: str | None) -> Axis | None:
        """`prompts: {brief, count, vary, keep}`: the prompts the lock holds for it, as a
        prompt axis labelled p1, p2, ...; a missing or stale lock entry is a located error
        naming the command that writes it."""
        c = self.c
        m = c.mapping(node, path, BRIEF_KEYS)
        if m is None:
            return None
        if "brief" not in m or "count" not in m:
            c.add(node, path, "needs a brief and a count, e.g. {brief: \"...\", count: 8}")
            return None
        brief = c.text(m["brief"][1], f"{path}.brief")
        count = c.integer(m["count"][1], f"{path}.count", 1, promptlock.MAX_COUNT)
        extra = {k: c.text(m[k][1], f"{path}.{k}") if k in m else "" for k in ("vary", "keep")}
        if brief is None or count is None or job_id is None or None in extra.values():
            return None
        ask = promptlock.Brief(job_id, brief, count, extra["vary"] or "", extra["keep"] or "")
        self.briefs.append(ask)
        expand = f"run `imagebatch expand {self.source}`"
        lock = self.lock(node, path)
        if lock is None:
            return None
        entry = lock.get(job_id)
        if entry is None or entry.digest != ask.digest or len(entry.prompts) != count:
            if not self.briefs_only:
                why = ("has no prompts yet" if entry is None else
                       "changed since its prompts were written" if entry.digest != ask.digest
                       else f"asks for {count} prompts and the lock holds "
                            f"{len(entry.prompts)}")
                c.add(node, path, f"this brief {why} "
                                  f"({promptlock.lock_name(self.source)}): {expand} to "
                                  "write them, then review and commit the lock")
                return None
            # stand-ins, so the rest of the manifest is checked as usual
            prompts: tuple[str, ...] = tuple(f"(prompt {i} of {job_id}'s brief)"
                                             for i in range(1, count + 1))
        else:
            prompts = entry.prompts
        # the lock's prompts are literal text: braces in them are not placeholders
        values = tuple(p.replace("{", "{{").replace("}", "}}") for p in prompts)
        labels = tuple(f"p{i}" for i in range(1, len(values) + 1))
        return Axis("prompt", values, True, _loc(node), labels)

    def lock(self, node: Node, path: str) -> dict[str, promptlock.Entry] | None:
        """The manifest's prompts lock, read once (at the manifest's revision for `diff`);
        {} when there is none."""
        if self._lock is not None:
            return self._lock
        name = promptlock.lock_name(self.source)
        if self.read_input is not None:
            # at a revision the source is "REV:path/m.yaml": the lock is the file beside
            # path/m.yaml, named from its stem (not from "REV:m" at the top of a repository)
            name = promptlock.lock_name(self.source.rpartition(":")[2] or self.source)
        file = Path(self.source).parent / name
        try:
            if self.read_input is not None:
                data = self.read_input(name)
            else:
                with open(file, "rb") as fh:
                    data = fh.read(promptlock.MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            data = None
        except OSError as exc:
            self.c.add(node, path, f"cannot read the prompts lock {name!r}: "
                                   f"{exc.strerror or exc}")
            return None
        if data is None:
            self._lock = {}
            return self._lock
        try:
            self._lock = promptlock.parse_lock(data, str(file))
        except ManifestError as exc:
            self.c.problems.extend(exc.problems)
            self._lock = {}
            return None
        return self._lock

    def axes(self, node: Node, path: str, *, zipped: bool,
             job_id: str | None = None) -> list[Axis] | None:
        c = self.c
        m = c.mapping(node, path, None)
        if m is None:
            return None
        if not m:
            c.add(node, path, "is empty; list at least one axis")
            return None
        axes: list[Axis] = []
        ok = True
        for name, (knode, vnode) in m.items():
            where = f"{path}.{name}"
            if name in ("seed", "seeds"):
                c.add(knode, where, "sweep seeds with the job's seeds:, not a matrix axis")
                ok = False
                continue
            if name == "model":
                c.add(knode, where, "the model is set once, at the top of the manifest")
                ok = False
                continue
            is_field = name in AXIS_FIELDS
            if is_field and not self.provider_field(name, knode, where):
                ok = False
                continue
            if name in ("image", "strength"):
                c.add(knode, where, f"{name} is set on the job (or in defaults), not swept")
                ok = False
                continue
            if not is_field:
                if not _VARIABLE.match(name):
                    c.add(knode, where, f"{name!r} is not a valid variable name "
                                        "(letters, digits and _, not starting with a digit)")
                    ok = False
                    continue
                if name in BUILTINS:
                    c.add(knode, where, f"{{{name}}} is a built-in placeholder; "
                                        "give the variable another name")
                    ok = False
                    continue
            if isinstance(vnode, MappingNode):
                drawn = self.drawn(name, vnode, where, is_field, job_id)
                if drawn is None:
                    ok = False
                elif ok:
                    axes.append(Axis(name, drawn, is_field, _loc(vnode)))
                continue
            values = self.axis_list(name, vnode, where, is_field)
            if values is None:
                ok = False
            elif ok:
                axes.append(Axis(name, values, is_field, _loc(vnode)))
        if not ok:
            return None
        if zipped and len({len(a.values) for a in axes}) > 1:
            lengths = ", ".join(f"{a.name} has {len(a.values)}" for a in axes)
            c.add(node, path, f"zipped axes vary together and need equal lengths: {lengths}")
            return None
        return axes

    def job(self, node: Node, path: str, defaults: dict[str, Any],
            default_seeds: Seeds | None, ids: dict[str, int]) -> JobSpec | None:
        c = self.c
        m = c.mapping(node, path, JOB_KEYS)
        if m is None:
            return None
        ok = len(c.problems)
        job_id = None
        if "id" not in m:
            c.add(node, path, "needs an id (unique in the manifest; letters, digits, . _ -)")
        else:
            job_id = c.text(m["id"][1], f"{path}.id")
            if job_id is not None:
                if not _ID.match(job_id) or set(job_id) == {"."} or len(job_id) > 100:
                    c.add(m["id"][1], f"{path}.id",
                          f"{job_id[:120]!r} is not a valid id: use letters, digits, . _ - "
                          "(at most 100, not only dots)")
                elif job_id in ids:
                    c.add(m["id"][1], f"{path}.id",
                          f"{job_id!r} is already the id of jobs[{ids[job_id]}]")
                else:
                    ids[job_id] = int(path[5:-1])
        own, seeds, _ = self.fields(m, path, m["seeds"][1] if "seeds" in m else None)
        fields = dict(defaults)
        if "size" in own or "aspect_ratio" in own:  # the job's own choice replaces both
            fields.pop("size", None)
            fields.pop("aspect_ratio", None)
        fields.update(own)
        groups: list[tuple[Axis, ...]] = []
        names: dict[str, str] = {}
        broken = False
        for key in m:  # manifest order: a zip written before matrix varies first
            if key not in ("matrix", "zip", "prompts"):
                continue
            if key == "prompts":
                brief_axis = self.brief_axis(m[key][1], f"{path}.prompts", job_id)
                if brief_axis is None:
                    broken = True
                    continue
                if "prompt" in own or "prompt" in names:
                    c.add(m[key][0], f"{path}.prompts", "a job takes its prompts from a brief "
                                                        "or sets prompt:, not both")
                    continue
                names["prompt"] = key
                groups.append((brief_axis,))
                continue
            axes = self.axes(m[key][1], f"{path}.{key}", zipped=(key == "zip"), job_id=job_id)
            if axes is None:
                broken = True  # its variables are unknown: do not report their uses too
                continue
            for axis in axes:
                if axis.name in names:
                    c.add(axis.loc, f"{path}.{key}.{axis.name}",
                          f"{axis.name!r} is already an axis of {names[axis.name]}")
                    continue
                if axis.name in own:
                    c.add(axis.loc, f"{path}.{key}.{axis.name}",
                          f"{axis.name} is also set on the job itself; keep one")
                names[axis.name] = key
            if key == "zip":
                groups.append(tuple(axes))
            else:
                groups.extend((a,) for a in axes)
        if seeds is None and "seeds" not in m and "seed" not in m:
            seeds = default_seeds or Seeds(random=1)
        if ("prompt" not in fields and "prompt" not in m and "prompts" not in m
                and not any(a.name == "prompt" for g in groups for a in g)):
            c.add(node, path, "needs a prompt (here, in defaults, or as a matrix axis)")
        variables = {a.name for g in groups for a in g if not a.field}
        prompt_loc = _loc(m["prompt"][1]) if "prompt" in m else _loc(node)
        for name in TEXT_FIELDS:
            texts: list[tuple[str, Loc]] = []
            if name in m and name in own:
                texts.append((own[name], _loc(m[name][1])))
            elif name in fields:
                texts.append((fields[name], prompt_loc))
            for g in groups:
                for a in g:
                    if a.name == name:
                        texts.extend((v, a.loc) for v in a.values)
            for text, loc in texts if not broken else ():
                self._placeholders(text, loc, f"{path}.{name}", variables)
        written = set(m) | self.default_keys  # a field written but invalid is reported once
        if "image" in fields and "strength" not in written:
            c.add(m["image"][0] if "image" in m else node, f"{path}.image",
                  "an image-to-image job needs strength too (0..1: how far from the image "
                  "to go; 0 keeps it, 1 ignores it)")
        elif "strength" in fields and "image" not in written:
            c.add(m["strength"][0] if "strength" in m else node, f"{path}.strength",
                  "strength goes with an input image: set image too")
        if len(c.problems) > ok or job_id is None or seeds is None:
            return None
        digest = fields.get("image") or ""
        image_path = self.image_files.get(digest)
        image_bytes, image_format, image_loc = self.image_info.get(digest, (0, "", None))
        if "image" in m:  # where this job writes it (else where defaults do)
            image_loc = _loc(m["image"][1])
        return JobSpec(job_id, path, tuple(sorted(fields.items())), tuple(groups), seeds,
                       _loc(m["id"][1]), prompt_loc, image_path, image_bytes, image_format,
                       image_loc)

    def _placeholders(self, text: str, loc: Loc, path: str, variables: set[str]) -> None:
        if "{" not in text and "}" not in text:
            return
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            self.c.add(loc, path, f"{exc}; write {{{{ and }}}} for literal braces")
            return
        for _, field, spec, conversion in parts:
            if field is None:
                continue
            if field not in variables or spec or conversion:
                known = ", ".join("{" + v + "}" for v in sorted(variables)) or "none"
                self.c.add(loc, path, f"'{{{field}}}' is not a variable of this job "
                                      f"(variables: {known}); write {{{{ and }}}} for "
                                      "literal braces")
                return

    def load(self, root: Node | None) -> Manifest:
        c = self.c
        source = self.source
        if root is None:
            c.add((1, 1), "", "the file is empty; a manifest needs at least `version: 1` and "
                              "`jobs:`")
            raise ManifestError(c.problems)
        top = c.mapping(root, "", TOP_KEYS)
        if top is None:
            raise ManifestError(c.problems)
        if "version" not in top:
            c.add(root, "version", "is required: add `version: 1` at the top")
        else:
            vnode = top["version"][1]
            if not (isinstance(vnode, ScalarNode) and vnode.tag == _INT_TAG
                    and vnode.value.strip() == "1"):
                c.add(vnode, "version", f"{vnode.value if isinstance(vnode, ScalarNode) else '?'}"
                                        " is not supported; this version of imagebatch reads "
                                        "manifests of version 1")
        stem = Path(source).stem
        name = stem
        if "name" in top:
            name = c.text(top["name"][1], "name") or stem
            if not _NAME.match(name) or len(name) > 100:
                c.add(top["name"][1], "name", f"{name[:120]!r} is not a valid name: lowercase "
                                              "letters, digits, . _ - (first a letter or "
                                              "digit, at most 100)")
            elif windows_problem(name):  # the name is a folder: outputs/<name>/
                c.add(top["name"][1], "name", f"{name!r} {windows_problem(name)}; choose "
                                              "another name")
        elif not _NAME.match(stem) or len(stem) > 100:
            c.add(root, "name", f"the file name gives the name {stem!r}, which is not valid "
                                "(lowercase letters, digits, . _ -); add a `name:`")
        elif windows_problem(stem):
            c.add(root, "name", f"the file name gives the name {stem!r}, which "
                                f"{windows_problem(stem)}; add a `name:`")
        self.name = name
        model = self.default_model
        if "model" in top:
            model = c.text(top["model"][1], "model") or model
            if len(model) > 200:
                c.add(top["model"][1], "model", "is too long to be a model id")
        defaults: dict[str, Any] = {}
        default_seeds = None
        if "defaults" in top:
            dm = c.mapping(top["defaults"][1], "defaults", DEFAULT_FIELDS)
            if dm is not None:
                self.default_keys = set(dm)
                defaults, default_seeds, _ = self.fields(dm, "defaults", None)
        if "seeds" in top:
            if default_seeds is not None:
                c.add(top["seeds"][0], "seeds", "defaults.seed is set too; keep one of them")
            default_seeds = self.seeds(top["seeds"][1], "seeds")
        output, path_loc, known_vars = self.output(top)
        jobs: list[JobSpec] = []
        if "jobs" not in top:
            c.add(root, "jobs", "is required: a list of jobs, each with an id and a prompt")
        else:
            items = c.sequence(top["jobs"][1], "jobs")
            if items is not None and not items:
                c.add(top["jobs"][1], "jobs", "is an empty list; add at least one job")
            ids: dict[str, int] = {}
            for i, item in enumerate(items or []):
                spec = self.job(item, f"jobs[{i}]", defaults, default_seeds, ids)
                if spec is not None:
                    jobs.append(spec)
        if output is not None:
            for text, key in ((output.path, "output.path"), (output.label, "output.sheet.label")):
                self._template_vars(text, key, known_vars[key], jobs)
        exports: list[ExportSettings] = []
        if "exports" in top:
            exports = self.exports(top["exports"][1])
            for text, where, loc in self.export_paths:
                self._template_vars(text, where, loc, jobs, EXPORT_PLACEHOLDERS)
        # the cap is judged from the axes' sizes, before anything is expanded in memory
        total = sum(j.count for j in jobs)
        if total > self.max_jobs:
            biggest = max(jobs, key=lambda j: j.count)
            c.add(top["jobs"][1], "jobs",
                  f"the plan has {total:,} jobs, over the cap of {self.max_jobs:,} "
                  f"({biggest.where} {biggest.id!r} alone makes {biggest.count:,}); "
                  "shrink the sweep or raise --max-jobs")
        if c.problems:
            raise ManifestError(sorted(c.problems, key=lambda p: (p.line, p.column)))
        assert output is not None
        return Manifest(source, name, model, output, tuple(jobs), path_loc,
                        known_vars["output.sheet.label"], tuple(exports),
                        tuple((b.job_id, b.brief) for b in self.briefs))

    def _template_vars(self, text: str, path: str, loc: Loc, jobs: list[JobSpec],
                       extra: tuple[str, ...] = ()) -> None:
        """Each variable of an output template must be an axis of every job, not only one."""
        names = [{a.name for g in j.groups for a in g} for j in jobs]
        variables = set().union(*names)
        builtins = (*BUILTINS, *extra)
        for _, field, _, _ in string.Formatter().parse(text):
            if field is None or field in builtins:
                continue
            if field not in variables:
                known = ", ".join("{" + k + "}" for k in (*builtins, *sorted(variables)))
                close = difflib.get_close_matches(field, [*builtins, *variables], n=1)
                hint = f"did you mean {{{close[0]}}}? " if close else ""
                self.c.add(loc, path, f"{text!r}: unknown placeholder {{{field}}}; {hint}"
                                      f"(known: {known}; write {{{{ and }}}} for literal braces)")
                return
            for job, own in zip(jobs, names, strict=True):
                if field not in own:
                    self.c.add(loc, path, f"{text!r}: job {job.id!r} ({job.where}) has no "
                                          f"{{{field}}}; a variable used here must be a matrix "
                                          "or zip axis of every job")
                    return

    def output(self, top: dict[str, tuple[Node, Node]]
               ) -> tuple[OutputSettings | None, Loc, dict[str, Loc]]:
        c = self.c
        d = OutputSettings()
        locs = {"output.path": (1, 1), "output.sheet.label": (1, 1)}
        if "output" not in top:
            return d, (1, 1), locs
        om = c.mapping(top["output"][1], "output", OUTPUT_KEYS)
        if om is None:
            return None, (1, 1), locs
        path, thumb, label, per_page = d.path, d.thumbnail, d.label, d.per_page
        path_loc = _loc(top["output"][1])
        if "path" in om:
            path_loc = _loc(om["path"][1])
            locs["output.path"] = path_loc
            path = _template(c, om["path"][1], "output.path", _Any(), _path_text) or path
        if "thumbnail" in om:
            v = c.integer(om["thumbnail"][1], "output.thumbnail", 0, 2048,
                          " of pixels (0 turns thumbnails off)")
            if v is not None and 0 < v < 32:
                c.add(om["thumbnail"][1], "output.thumbnail", f"{v} px is too small to see; "
                                                              "use 32..2048, or 0 for none")
            thumb = v if v is not None else thumb
        if "sheet" in om:
            sm = c.mapping(om["sheet"][1], "output.sheet", SHEET_KEYS)
            if sm is not None and "label" in sm:
                locs["output.sheet.label"] = _loc(sm["label"][1])
                label = _template(c, sm["label"][1], "output.sheet.label", _Any()) or label
            if sm is not None and "per_page" in sm:
                v = c.integer(sm["per_page"][1], "output.sheet.per_page", 1, 10_000)
                per_page = v if v is not None else per_page
        return OutputSettings(path, thumb, label, per_page), path_loc, locs

    def exports(self, node: Node) -> list[ExportSettings]:
        """The `exports:` list: every entry checked, names unique (export-1, ... by default)."""
        c = self.c
        items = c.sequence(node, "exports")
        if items is None:
            return []
        if len(items) > MAX_EXPORTS:
            c.add(node, "exports", f"has {len(items)} entries; a manifest may have at most "
                                   f"{MAX_EXPORTS} exports")
            return []
        out: list[ExportSettings] = []
        names: dict[str, int] = {}
        for i, item in enumerate(items):
            self.export_name = None
            spec = self.export(item, f"exports[{i}]", i)
            if self.export_name is None:
                continue
            name, loc = self.export_name  # known even when another setting is wrong
            if name in names:
                first = names[name]
                how = "" if name != f"export-{first + 1}" else \
                    f" (the default name of exports[{first}], which has no name:)"
                c.add(loc, f"exports[{i}].name",
                      f"{name!r} is already the name of exports[{first}]{how}; "
                      "export names must be unique")
                continue
            names[name] = i
            if spec is not None:
                out.append(spec)
        return out

    def export(self, node: Node, path: str, index: int) -> ExportSettings | None:
        """One export entry, or None (reported)."""
        c = self.c
        m = c.mapping(node, path, EXPORT_KEYS)
        if m is None:
            return None
        ok = len(c.problems)
        loc = _loc(node)
        kw: dict[str, Any] = {"where": path, "loc": loc, "path_loc": loc, "size_loc": loc}
        name = f"export-{index + 1}"
        if "name" in m:
            vnode = m["name"][1]
            name = c.text(vnode, f"{path}.name") or name
            if not _NAME.match(name) or len(name) > 100:
                c.add(vnode, f"{path}.name", f"{name[:120]!r} is not a valid name: lowercase "
                                             "letters, digits, . _ - (first a letter or digit, "
                                             "at most 100)")
            kw["loc"] = _loc(vnode)
        kw["name"] = name
        if len(c.problems) == ok:
            self.export_name = (name, kw["loc"])
        if "from" in m:
            self._export_from(m["from"][1], f"{path}.from", kw)
        if "path" in m:
            kw["path_loc"] = _loc(m["path"][1])
            text = _template(c, m["path"][1], f"{path}.path", _Any(), _export_path_text)
            if text is not None:
                kw["path"] = text
                self.export_paths.append((text, f"{path}.path", kw["path_loc"]))
        template = kw.get("path", DEFAULT_EXPORT_PATH)
        if "width" in m and "size" in m:
            c.add(m["size"][0], f"{path}.size", "set either width (height follows) or size "
                                                "(an exact box), not both")
        elif "width" in m:
            kw["size_loc"] = _loc(m["width"][1])
            widths = self._widths(m["width"][1], f"{path}.width")
            if widths is not None:
                kw["widths"] = widths
                _one_file_each(c, kw["path_loc"], path, template, len(widths), "width")
        elif "size" in m:
            kw["size_loc"] = _loc(m["size"][1])
            kw["size"] = self._box(m["size"][1], f"{path}.size")
        if "fit" in m:
            if "size" not in m:
                c.add(m["fit"][0], f"{path}.fit", "fit applies to size: WxH; remove it, or "
                                                  "give a size")
            elif (fit := c.choice(m["fit"][1], f"{path}.fit", FITS)) is not None:
                kw["fit"] = fit
        if "focus" in m:
            if "size" not in m or kw.get("fit", "cover") != "cover":
                c.add(m["focus"][0], f"{path}.focus", "focus is the point a cover crop keeps: "
                                                      "it needs size: WxH and fit: cover")
            else:
                self._focus(m["focus"][1], f"{path}.focus", kw)
        if "format" in m:
            formats = self._formats(m["format"][1], f"{path}.format")
            if formats is not None:
                kw["formats"] = formats
                _one_file_each(c, kw["path_loc"], path, template, len(formats), "format")
        if "quality" in m:
            kw["quality"] = c.integer(m["quality"][1], f"{path}.quality", 1, 100)
        if "background" in m:
            self._background(m["background"][1], f"{path}.background", kw)
        if "upscale" in m:
            kw["upscale"] = c.boolean(m["upscale"][1], f"{path}.upscale")
        if "metadata" in m:
            kw["metadata"] = c.choice(m["metadata"][1], f"{path}.metadata", METADATA)
        if len(c.problems) > ok:
            return None
        return ExportSettings(**kw)

    def _export_from(self, node: Node, path: str, kw: dict[str, Any]) -> None:
        c = self.c
        if isinstance(node, MappingNode):
            fm = c.mapping(node, path, ("rating",))
            if fm is None:
                return
            if "rating" not in fm:
                c.add(node, path, "write {rating: N}: images rated N (1..5) or more")
                return
            rating = c.integer(fm["rating"][1], f"{path}.rating", 1, 5)
            if rating is not None:
                kw["source"], kw["rating"] = "rating", rating
            return
        if isinstance(node, ScalarNode) and node.value == "rating":
            c.add(node, path, "write {rating: N}: images rated N (1..5) or more")
            return
        value = c.choice(node, path, ("picks", "all"))
        if value is not None:
            kw["source"] = value

    def _widths(self, node: Node, path: str) -> tuple[int, ...] | None:
        c = self.c
        what = " of pixels"
        if not isinstance(node, SequenceNode):
            value = c.integer(node, path, 1, MAX_EXPORT_SIDE, what)
            return None if value is None else (value,)
        if not node.value:
            c.add(node, path, "is an empty list; give at least one width")
            return None
        if len(node.value) > MAX_WIDTHS:
            c.add(node, path, f"has {len(node.value):,} widths; an export may have at most "
                              f"{MAX_WIDTHS}")
            return None
        widths: list[int] = []
        seen: dict[int, int] = {}
        for i, item in enumerate(node.value):
            value = c.integer(item, f"{path}[{i}]", 1, MAX_EXPORT_SIDE, what)
            if value is None:
                continue
            if value in seen:
                c.add(item, f"{path}[{i}]", f"{value} is already {path}[{seen[value]}]")
                continue
            seen[value] = i
            widths.append(value)
        return tuple(widths) if len(widths) == len(node.value) else None

    def _box(self, node: Node, path: str) -> tuple[int, int] | None:
        c = self.c
        text = c.text(node, path)
        if text is None:
            return None
        m = _BOX.match(text.strip())
        if not m:
            c.add(node, path, f"{text[:40]!r} is not WIDTHxHEIGHT, e.g. 1200x630")
            return None
        w, h = int(m.group(1)), int(m.group(2))
        if not (1 <= w <= MAX_EXPORT_SIDE and 1 <= h <= MAX_EXPORT_SIDE):
            c.add(node, path, f"{text!r}: each side must be 1..{MAX_EXPORT_SIDE:,} pixels")
            return None
        return w, h

    def _focus(self, node: Node, path: str, kw: dict[str, Any]) -> None:
        c = self.c
        items = c.sequence(node, path)
        if items is None:
            return
        if len(items) != 2:
            c.add(node, path, f"has {len(items)} values; write [x, y], each 0..1 (0.5 is the "
                              "middle)")
            return
        x = c.number(items[0], f"{path}[0]", 0.0, 1.0)
        y = c.number(items[1], f"{path}[1]", 0.0, 1.0)
        if x is not None and y is not None:
            kw["focus"] = (x, y)

    def _formats(self, node: Node, path: str) -> tuple[str, ...] | None:
        c = self.c
        if not isinstance(node, SequenceNode):
            value = c.choice(node, path, EXPORT_FORMATS)
            return None if value is None else (value,)
        if not node.value:
            c.add(node, path, "is an empty list; give at least one format")
            return None
        formats: list[str] = []
        for i, item in enumerate(node.value):
            value = c.choice(item, f"{path}[{i}]", EXPORT_FORMATS)
            if value is None:
                continue
            if value in formats:
                c.add(item, f"{path}[{i}]", f"{value!r} is already {path}"
                                            f"[{formats.index(value)}]")
                continue
            formats.append(value)
        return tuple(formats) if len(formats) == len(node.value) else None

    def _background(self, node: Node, path: str, kw: dict[str, Any]) -> None:
        c = self.c
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.value == "":
            c.add(node, path, "is empty; a colour starting with # must be quoted, since # "
                              "starts a YAML comment: background: \"#ffffff\"")
            return
        text = c.text(node, path)
        if text is None:
            return
        rgb = _colour(text.strip())
        if rgb is None:
            c.add(node, path, f"{text[:40]!r} is not a colour: write \"#rrggbb\", \"#rgb\" "
                              "or a name such as white")
            return
        kw["background"] = rgb


def _one_file_each(c: _Checker, loc: Loc, path: str, template: str, count: int,
                   field: str) -> None:
    """Several widths (or formats) need their placeholder in the export's path, else they
    would all write one file: a located problem on the path when it is missing."""
    if count > 1 and not _uses(template, field):
        c.add(loc, f"{path}.path", f"{template!r}: {count} {field}s would write one file; add "
                                   f"{{{field}}} to the path")


def _uses(template: str, name: str) -> bool:
    """Whether a (valid) template has the placeholder {name}."""
    return any(field == name for _, field, _, _ in string.Formatter().parse(template))


class _Any(set):  # type: ignore[type-arg]
    """A placeholder set that admits every name (real names are checked once jobs are read)."""

    def __contains__(self, item: object) -> bool:
        return True


#: An input image read for image-to-image, at most: a larger one could never be sent, as
#: Stability takes at most 10 MiB in one request with the image in it.
MAX_INPUT_BYTES = apispec.STABILITY_MAX_REQUEST_BYTES


def load_manifest(path: str, *, max_jobs: int = DEFAULT_MAX_JOBS,
                  default_model: str = apispec.DEFAULT_MODEL,
                  providers: tuple[apispec.Provider, ...] | None = None) -> Manifest:
    """Read and validate a manifest file for the providers it is sent to; ManifestError
    lists every problem in it."""
    return _validate(_read(path), path, max_jobs, default_model, providers)


def _validate(text: str, path: str, max_jobs: int, default_model: str,
              providers: tuple[apispec.Provider, ...] | None,
              read_input: Callable[[str], bytes] | None = None) -> Manifest:
    """A manifest's text, named `path` in every problem, validated into a Manifest for the
    providers it is sent to."""
    root, aliases = _compose(text, path)
    loader = _Loader(path, default_model, max_jobs, providers, read_input)
    try:
        return loader.load(root)
    except _Budget:
        # composing capped the values written, so only aliases can make a walk this long
        how = "through its aliases (*name) and merge keys (<<:)" if aliases else "when read"
        raise ManifestError([Problem(
            path, 1, 1, "", f"the document expands to more than {MAX_NODES:,} values {how}; "
                            f"a manifest may hold at most that many")]) from None


def load_briefs(path: str, *, default_model: str = apispec.DEFAULT_MODEL,
                providers: tuple[apispec.Provider, ...] | None = None,
                ) -> list[promptlock.Brief]:
    """The briefs of a manifest (`prompts:` blocks), the manifest otherwise checked as
    `load_plan` checks it; a brief needs no lock entry here (`expand` writes them)."""
    text = _read(path)
    root, _ = _compose(text, path)
    loader = _Loader(path, default_model, DEFAULT_MAX_JOBS, providers, briefs_only=True)
    try:
        _plan_of(loader.load(root), None, providers)
    except _Budget:
        raise ManifestError([Problem(path, 1, 1, "", f"the document expands to more than "
                                                     f"{MAX_NODES:,} values")]) from None
    return loader.briefs


def _nearby_manifest(path: Path) -> str:
    """' (did you mean ...?)' naming a manifest of the same folder with a close name, or ""."""
    try:
        names = [p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml")]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f" (did you mean {str(path.parent / close[0])!r}?)" if close else ""


def load_plan(path: str, *, max_jobs: int = DEFAULT_MAX_JOBS,
              default_model: str = apispec.DEFAULT_MODEL,
              shard: tuple[int, int] | None = None,
              providers: tuple[apispec.Provider, ...] | None = None) -> Plan:
    """Load, validate and expand a manifest: the Plan `run` and `plan` share."""
    manifest = load_manifest(path, max_jobs=max_jobs, default_model=default_model,
                             providers=providers)
    return _plan_of(manifest, shard, providers)


def load_plan_bytes(data: bytes, source: str, *, max_jobs: int = DEFAULT_MAX_JOBS,
                    default_model: str = apispec.DEFAULT_MODEL,
                    providers: tuple[apispec.Provider, ...] | None = None,
                    read_input: Callable[[str], bytes] | None = None) -> Plan:
    """The Plan of a manifest given as bytes (a file at a git revision), checked exactly as
    `load_plan` checks a file; every problem is located in `source` (e.g. `main:m.yaml`).
    `read_input` reads an input image named relative to it (at the same revision)."""
    if len(data) > MAX_FILE_BYTES:  # said like a file on disk that is too big
        raise ManifestError([Problem(source, 1, 1, "", f"is {len(data):,} bytes; a manifest "
                                                       f"may be at most {MAX_FILE_BYTES:,}")])
    manifest = _validate(_decode(data, source), source, max_jobs, default_model, providers,
                         read_input)
    return _plan_of(manifest, None, providers)


def _plan_of(manifest: Manifest, shard: tuple[int, int] | None,
             providers: tuple[apispec.Provider, ...] | None) -> Plan:
    """A validated manifest expanded for `providers` (and its exports checked), then cut to
    `shard`."""
    if not manifest.exports:
        return expand(manifest, shard=shard, providers=providers)
    from . import exportplan

    plan = expand(manifest, providers=providers)
    exportplan.check(plan)  # the whole plan: a shard must not hide another's clash
    if shard is None:
        return plan
    return dataclasses.replace(plan, jobs=tuple(j for j in plan.jobs if in_shard(j.key, shard)),
                               shard=shard)


def load_plans(
    manifests: Sequence[str], env: Mapping[str, str], prefix: str | Sequence[str], *,
    max_jobs: int = DEFAULT_MAX_JOBS, shard: tuple[int, int] | None = None,
    providers: tuple[apispec.Provider, ...] | None = None,
) -> list[Plan]:
    """Load and validate every manifest before anything is sent; all errors at once.

    `prefix` is the environment prefix, or a pool's prefixes: their `providers` decide the
    request fields allowed and the keys (None: the ones the environment chooses for the
    prefixes, through the installed provider registry). The model a manifest leaves
    unset is the first prefix's `{prefix}_MODEL_ID`. Two plans of one name would write to
    one folder: refused.
    """
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    for each in prefixes:
        config.check_prefix(each)
    prefix = prefixes[0]
    model = config.default_model(env, prefix)
    if providers is None:
        providers = apispec.registry().chosen(env, prefixes)
    plans: list[Plan] = []
    problems: list[Problem] = []
    unreadable = []  # a missing file must not hide the problems of the others
    for path in manifests:
        try:
            plans.append(load_plan(path, max_jobs=max_jobs, default_model=model, shard=shard,
                                   providers=providers))
        except ManifestError as exc:
            problems.extend(exc.problems)
        except UsageError as exc:
            unreadable.append(str(exc))
    if len(manifests) == 1 and unreadable and not problems:
        raise UsageError(unreadable[0])
    if problems or unreadable:
        raise ManifestError(problems, unreadable)
    names: dict[str, str] = {}
    for plan in plans:
        if plan.name in names:
            raise UsageError(
                f"{plan.source} and {names[plan.name]} are both named {plan.name!r}: "
                "they would write to one folder; give one a different `name:`"
            )
        names[plan.name] = plan.source
    return plans

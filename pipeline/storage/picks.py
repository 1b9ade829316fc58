"""The picks file: which images a person picked, rejected or rated, beside the manifest.

`manifests/launch.yaml` has `manifests/launch.picks.json`:

    {
      "version": 1,
      "manifest": "launch",
      "picks": {
        "city/a/1.png": {"key": "<64 hex>", "rating": 5, "status": "pick"}
      }
    }

Each entry carries the key of the job it was decided on: when the plan's key for that path
changes (the prompt was edited), the entry is stale and applies to no picture until it is
cleared or decided again. The file is read like a manifest (every problem with line and
column) and written only under an exclusive lock, re-read first, then replaced atomically,
so two writers never lose each other's changes and a broken file is never overwritten.
"""

from __future__ import annotations

import bisect
import difflib
import enum
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer at a time is then the user's care
    fcntl = None  # type: ignore[assignment]

from ..errors import ImagebatchError, Problem, StoreError, printable, text_problem
from ..planning.plan import Plan
from .store import write_error, write_file

PICK, REJECT = "pick", "reject"
STATUSES: Final = (PICK, REJECT)
VERSION = 1
SUFFIX = ".picks.json"
#: A picks file holds a line per decided image; 8 MB is tens of thousands of them. Anything
#: larger is not a picks file a person wrote, and is refused unread.
MAX_FILE_BYTES = 8 * 1024 * 1024
#: How long a writer waits for another to finish before giving up (each holds it briefly).
LOCK_TIMEOUT = 30.0
MAX_SHOWN = 200  # problems in an error's message (all are kept in its `problems`)
MAX_HINTS = 5  # unknown paths given a "did you mean" (each costs a scan of the plan)
TOP_KEYS = ("version", "manifest", "picks")
ENTRY_KEYS = ("key", "rating", "status")
_KEY = re.compile(r"[0-9a-f]{64}\Z")
# A JSON token of a document already known to be valid: a string, punctuation, or a bare
# literal (number, true, false, null).
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.DOTALL)


class _Keep(enum.Enum):
    """The type of KEEP (an enum member: a singleton type checkers understand)."""

    KEEP = "keep"

    def __repr__(self) -> str:
        return "KEEP"


#: In a change, "leave this field as it is in the file now" (read under the lock, so a
#: rating set by one writer never undoes a status another writer set meanwhile). A field of
#: a stale entry is not kept: it was decided on another picture.
KEEP: Final = _Keep.KEEP


class PicksError(ImagebatchError):
    """A picks file or a change to it that cannot be used; "FILE:LINE:COL: field: what"."""

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):
            self.problems: list[Problem] = []
            super().__init__(problems)
        else:
            self.problems = list(problems)
            shown = [str(p) for p in self.problems[:MAX_SHOWN]]
            if len(self.problems) > MAX_SHOWN:
                shown.append(f"... and {len(self.problems) - MAX_SHOWN} more problems")
            super().__init__("\n".join(shown))


@dataclass(frozen=True, slots=True)
class PickEntry:
    """One image's decision: the job key it was made on, pick/reject/None, rating 1..5/None."""

    key: str
    status: str | None
    rating: int | None

    def as_dict(self) -> dict[str, Any]:
        """The entry as the file holds it."""
        return {"key": self.key, "rating": self.rating, "status": self.status}


@dataclass(frozen=True, slots=True)
class Picks:
    """Every decision of one manifest: image path (relative to images/) -> entry, sorted."""

    manifest: str
    entries: Mapping[str, PickEntry]

    def is_stale(self, path: str, plan: Plan) -> bool:
        """The entry of `path` was made on another picture: the plan's key for the path differs,
        or the plan has no such path any more."""
        entry = self.entries.get(path)
        return entry is not None and plan_keys(plan).get(path) != entry.key

    def status_of(self, path: str, plan: Plan) -> str:
        """'pick', 'reject', 'stale' or '' (undecided), as pages and sheets mark an image."""
        entry = self.entries.get(path)
        if entry is None:
            return ""
        if self.is_stale(path, plan):
            return "stale"
        return entry.status or ""


@dataclass(frozen=True, slots=True)
class PickCounts:
    """How many entries are picked, rejected, rated and stale (stale ones count only there)."""

    picked: int
    rejected: int
    rated: int
    stale: int

    def as_dict(self) -> dict[str, int]:
        """The counts as `status --json` prints them."""
        return {"picked": self.picked, "rejected": self.rejected, "rated": self.rated,
                "stale": self.stale}

    def __str__(self) -> str:
        return (f"picked {self.picked}, rejected {self.rejected}, rated {self.rated}, "
                f"stale {self.stale}")


def make_picks(manifest: str, entries: Mapping[str, PickEntry]) -> Picks:
    """A Picks with its entries sorted by path and read-only."""
    return Picks(manifest, MappingProxyType(dict(sorted(entries.items()))))


# One plan is asked about again and again (is_stale per image): its path -> key map is kept
# for the last few plans, matched by identity (a Plan hashes all its jobs, which is slow).
_KEYS_CACHE: list[tuple[Plan, dict[str, str]]] = []


def plan_keys(plan: Plan) -> dict[str, str]:
    """Image path -> job key for every job of `plan` (do not modify the result)."""
    for cached, keys in _KEYS_CACHE:
        if cached is plan:
            return keys
    keys = {job.path: job.key for job in plan.jobs}
    _KEYS_CACHE.insert(0, (plan, keys))
    del _KEYS_CACHE[4:]
    return keys


def counts(picks: Picks, plan: Plan) -> PickCounts:
    """Picked, rejected, rated (current entries) and stale (any entry on another picture)."""
    keys = plan_keys(plan)
    picked = rejected = rated = stale = 0
    for path, entry in picks.entries.items():
        if keys.get(path) != entry.key:
            stale += 1
            continue
        picked += entry.status == PICK
        rejected += entry.status == REJECT
        rated += entry.rating is not None
    return PickCounts(picked, rejected, rated, stale)


def picks_path(manifest: str | Path, override: str | Path | None = None) -> Path:
    """Where a manifest's picks live: launch.yaml -> launch.picks.json beside it (override wins)."""
    if override is not None:
        return Path(override)
    m = Path(manifest)
    return m.with_name(m.stem + SUFFIX) if m.suffix else m.with_name(m.name + SUFFIX)


def dumps(picks: Picks) -> str:
    """The canonical file text: sorted, indented, one entry a line, a newline at the end."""
    head = (f'{{\n  "version": {VERSION},\n'
            f'  "manifest": {json.dumps(picks.manifest, ensure_ascii=False)},\n')
    if not picks.entries:
        return head + '  "picks": {}\n}\n'
    lines = [f"    {_json_text(path)}: {_entry_text(entry)}"
             for path, entry in sorted(picks.entries.items())]
    return head + '  "picks": {\n' + ",\n".join(lines) + "\n  }\n}\n"


# What json.dumps(..., ensure_ascii=False) escapes in a string: a string without any of
# these is written as it is between quotes, the same bytes at a fraction of the cost.
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')
_STATUS_TEXT: Final = {None: "null", PICK: '"pick"', REJECT: '"reject"'}
_RATING_TEXT: Final = {None: "null", 1: "1", 2: "2", 3: "3", 4: "4", 5: "5"}


def _json_text(text: str) -> str:
    """json.dumps(text, ensure_ascii=False), without its call for plain text."""
    if _NEEDS_ESCAPE.search(text) is None:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


def _entry_text(entry: PickEntry) -> str:
    """json.dumps(entry.as_dict(), ensure_ascii=False), built from known pieces when the
    fields are the ones a checked entry holds (a bool rating is not the number it equals)."""
    rating, status = entry.rating, entry.status
    if (type(rating) is int or rating is None) and rating in _RATING_TEXT \
            and (status is None or type(status) is str) and status in _STATUS_TEXT:
        return (f'{{"key": {_json_text(entry.key)}, "rating": {_RATING_TEXT[rating]}, '
                f'"status": {_STATUS_TEXT[status]}}}')
    return json.dumps(entry.as_dict(), ensure_ascii=False)


# ---- reading ------------------------------------------------------------------------------

def _line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset (JSON breaks lines with \\n only)."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _read_text(path: Path) -> str | None:
    """The file's text, None when it does not exist; PicksError when it cannot be a picks file."""
    source = str(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise PicksError(f"{source}: is a folder, not a picks file")
        if not stat.S_ISREG(info.st_mode):  # a pipe or a device could block or never end
            raise PicksError(f"{source}: is not a regular file")
        size = info.st_size
        if size > MAX_FILE_BYTES:  # a regular file says its size: refuse it unread
            raise PicksError([Problem(source, 1, 1, "", f"is {size:,} bytes; a picks file may "
                                                        f"be at most {MAX_FILE_BYTES:,}")])
        # the file may grow after stat: read one byte past the cap at most
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PicksError(f"{source}: cannot read the file ({exc.strerror or exc})") from None
    text, problem = text_problem(data, source, MAX_FILE_BYTES, "a picks file")
    if problem is not None:
        raise PicksError([problem])
    return text


class _Duplicate(Exception):
    """An object of the document has one key twice."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate
    return out


def _parse(text: str, source: str) -> Any:
    """The JSON document; a syntax error is a PicksError at its line and column."""
    if not text.strip():
        raise PicksError([Problem(source, 1, 1, "", "the file is empty; a picks file is "
                                                    '{"version": 1, "manifest": ..., '
                                                    '"picks": {...}} (or delete it)')])
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise PicksError([Problem(source, exc.lineno, exc.colno, "",
                                  f"not valid JSON: {exc.msg}")]) from None
    except _Duplicate:
        return _duplicates(text, source)
    except RecursionError:
        raise PicksError([Problem(source, 1, 1, "", "lists and objects are nested too deep "
                                                    "for a picks file")]) from None
    except ValueError as exc:  # an integer of more digits than int() converts
        m = re.search(r"\d{300,}", text)
        line, col = _line_col(text, m.start()) if m else (1, 1)
        raise PicksError([Problem(source, line, col, "", f"not a usable number: {exc}")]) \
            from None


Where = tuple[int, int]


def _locations(text: str) -> tuple[dict[tuple[Any, ...], Where], dict[tuple[Any, ...], Where],
                                   list[tuple[tuple[Any, ...], Where]]]:
    """Where each value and each key of a valid JSON document starts, by its path of keys
    and indexes, and where keys repeat within one object; walked without recursion."""
    values: dict[tuple[Any, ...], Where] = {}
    keys: dict[tuple[Any, ...], Where] = {}
    dupes: list[tuple[tuple[Any, ...], Where]] = []
    breaks = [m.start() for m in re.finditer("\n", text)]

    def at(offset: int) -> Where:  # by bisection: counting per token would be quadratic
        line = bisect.bisect_left(breaks, offset)
        return line + 1, offset - (breaks[line - 1] + 1 if line else 0) + 1

    # frames: [path, is_object, next key or index, expecting a key, keys seen]
    stack: list[list[Any]] = []

    def here() -> tuple[Any, ...]:
        if not stack:
            return ()
        frame = stack[-1]
        return (*frame[0], frame[2])

    for m in _TOKEN.finditer(text):
        tok = m.group()
        frame = stack[-1] if stack else None
        if tok in "}]":
            stack.pop()
        elif tok == ":":
            frame[3] = False  # type: ignore[index]
        elif tok == ",":
            if frame[1]:  # type: ignore[index]
                frame[3] = True  # type: ignore[index]
            else:
                frame[2] += 1  # type: ignore[index]
        elif frame is not None and frame[1] and frame[3]:
            key = json.loads(tok)
            frame[2] = key
            where = (*frame[0], key)
            if key in frame[4]:
                dupes.append((where, at(m.start())))
            else:
                frame[4].add(key)
                keys[where] = at(m.start())
        else:
            path = here()
            values.setdefault(path, at(m.start()))
            if tok == "{":
                stack.append([path, True, None, True, set()])
            elif tok == "[":
                stack.append([path, False, 0, False, set()])
    return values, keys, dupes


def _duplicates(text: str, source: str) -> Any:
    _, _, dupes = _locations(text)
    raise PicksError([Problem(source, line, col, _field(path),
                              f"duplicate key {printable(str(path[-1]))!r}; JSON readers keep "
                              "only one of them: remove the other")
                      for path, (line, col) in dupes])


def _field(path: tuple[Any, ...]) -> str:
    """A document path as messages name it: picks["city/a/1.png"].rating."""
    out = ""
    for i, part in enumerate(path):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 1 and path[0] == "picks":
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
        else:
            out += f".{part}" if out else str(part)
    return printable(out)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object"


_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be an image path relative to images/, or None when it can."""
    if not path:
        return "is empty"
    if path.startswith(("/", "\\")) or _DRIVE.match(path):
        return "is an absolute path; image paths are relative to the images folder"
    if "\\" in path:
        return "contains a backslash; image paths use /"
    if _CONTROL.search(path):
        return "contains a control character"
    parts = path.split("/")
    if ".." in parts or "." in parts or "" in parts:
        return "has an empty, '.' or '..' part; image paths stay inside the images folder"
    return None


class _Checker:
    """Checks a parsed document, collecting every problem, located lazily (only on error)."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.problems: list[tuple[tuple[Any, ...], bool, str]] = []

    def add(self, path: tuple[Any, ...], message: str, *, at_key: bool = False) -> None:
        self.problems.append((path, at_key, message))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        values, keys, _ = _locations(self.text)
        located = []
        for path, at_key, message in self.problems:
            where = (keys.get(path) if at_key else None) or values.get(path)
            probe = path
            while where is None and probe:  # fall back to the nearest enclosing value
                probe = probe[:-1]
                where = values.get(probe)
            line, col = where or (1, 1)
            located.append(Problem(self.source, line, col, _field(path), message))
        located.sort(key=lambda p: (p.line, p.column))
        raise PicksError(located)


def _unknown(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
    return f"unknown field {printable(key)[:100]!r}{hint}"


def _check_entry(c: _Checker, path: str, doc: Any) -> PickEntry | None:
    where: tuple[Any, ...] = ("picks", path)
    if not isinstance(doc, dict):
        c.add(where, f'must be an object {{"key": ..., "rating": ..., "status": ...}}, '
                     f"got {_kind(doc)}")
        return None
    ok = True
    for k in doc:
        if k not in ENTRY_KEYS:
            c.add((*where, k), _unknown(k, ENTRY_KEYS), at_key=True)
            ok = False
    key = doc.get("key")
    if "key" not in doc:
        c.add(where, "needs a key (the 64-hex key of the job the decision was made on, as "
                     "`imagebatch plan --json` prints it)")
        ok = False
    elif not isinstance(key, str) or not _KEY.match(key):
        shown = f" {printable(key)[:80]!r}" if isinstance(key, str) else ""
        c.add((*where, "key"), f"must be 64 lowercase hex digits (a job key), got "
                               f"{_kind(key)}{shown}")
        ok = False
    rating = doc.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int)
                               or not 1 <= rating <= 5):
        shown = f" {rating!r}" if isinstance(rating, (int, float)) else ""
        c.add((*where, "rating"), f"must be a whole number from 1 to 5, or null; got "
                                  f"{_kind(rating)}{shown}")
        ok = False
    status = doc.get("status")
    if status is not None and status not in STATUSES:
        shown = f" {printable(status)[:80]!r}" if isinstance(status, str) else ""
        c.add((*where, "status"), f'must be "pick", "reject" or null; got {_kind(status)}'
                                  f"{shown}")
        ok = False
    return PickEntry(key, status, rating) if ok and isinstance(key, str) else None


def _check(doc: Any, c: _Checker, plan: Plan | None) -> Picks:
    if not isinstance(doc, dict):
        c.add((), f'must be an object {{"version": 1, "manifest": ..., "picks": {{...}}}}, '
                  f"got {_kind(doc)}")
        c.raise_if_any()
    for k in doc:
        if k not in TOP_KEYS:
            c.add((k,), _unknown(k, TOP_KEYS), at_key=True)
    if "version" not in doc:
        c.add((), 'needs "version": 1')
    elif isinstance(doc["version"], bool) or doc["version"] != VERSION:
        c.add(("version",), f"{printable(json.dumps(doc['version']))[:40]} is not supported; "
                            f"this version of imagebatch reads picks files of version {VERSION}")
    name = doc.get("manifest", "")
    if not isinstance(name, str):
        c.add(("manifest",), f"must be the manifest's name (text), got {_kind(name)}")
        name = ""
    elif plan is not None and "manifest" in doc and name != plan.name:
        c.add(("manifest",), f"these are the picks of {printable(name)[:100]!r}, not of "
                             f"{plan.name!r} ({plan.source}); give the right --picks file, "
                             "or correct the name if the manifest was renamed")
    entries: dict[str, PickEntry] = {}
    picks = doc.get("picks")
    if "picks" not in doc:
        c.add((), 'needs "picks": {...} (an object, {} when nothing is decided yet)')
    elif not isinstance(picks, dict):
        c.add(("picks",), f"must be an object of image path -> entry, got {_kind(picks)}")
    else:
        keys = plan_keys(plan) if plan is not None else None
        hints = 0
        for path, value in picks.items():
            why = path_problem(path)
            if why is not None:
                c.add(("picks", path), f"the image path {why}", at_key=True)
                continue
            if keys is not None and path not in keys:
                hints += 1
                close = difflib.get_close_matches(path, list(keys), n=1, cutoff=0.8) \
                    if hints <= MAX_HINTS else []
                hint = f"; did you mean {close[0]!r}?" if close else \
                    "; if its job was removed or renamed, delete this entry"
                c.add(("picks", path), f"{printable(path)[:200]!r} is not an image of the plan "
                                       f"of {plan.source}{hint}", at_key=True)  # type: ignore[union-attr]
                continue
            entry = _check_entry(c, path, value)
            if entry is not None and (entry.status is not None or entry.rating is not None):
                entries[path] = entry  # one with neither says nothing: dropped
    c.raise_if_any()
    return make_picks(name, entries)


# The picks last read or written of a few files, by file name: (plan, text, picks). What
# load_picks makes of a text depends on that text and the plan alone, so a file whose text
# is the same as then, read against the same plan (the same object: a Plan is frozen), is
# those picks again: the file is still read whole each time (under the lock when writing),
# only its parse and checks are skipped. Only picks that passed every check are kept here,
# so a broken file is checked, and refused, on every read.
_READ_CACHE: dict[str, tuple[Plan | None, str, Picks]] = {}
_READ_CACHE_FILES = 4
_READ_CACHE_LOCK = threading.Lock()  # the review server reads and writes from threads


def _cached(source: str, text: str, plan: Plan | None) -> Picks | None:
    with _READ_CACHE_LOCK:
        hit = _READ_CACHE.get(source)
    if hit is not None and hit[0] is plan and hit[1] == text:
        return hit[2]
    return None


def _remember(source: str, text: str, plan: Plan | None, picks: Picks) -> None:
    with _READ_CACHE_LOCK:
        _READ_CACHE.pop(source, None)
        _READ_CACHE[source] = (plan, text, picks)
        while len(_READ_CACHE) > _READ_CACHE_FILES:
            del _READ_CACHE[next(iter(_READ_CACHE))]  # the least recently stored


def load_picks(path: Path, plan: Plan | None = None) -> Picks:
    """Read a picks file: missing -> no picks; broken -> PicksError with every problem located.

    With a plan, paths the plan does not have are problems too (give the whole plan, not a
    shard of it) and a file naming another manifest is refused.
    """
    path = Path(path)
    text = _read_text(path)
    if text is None:
        return make_picks(plan.name if plan is not None else "", {})
    source = str(path)
    known = _cached(source, text, plan)
    if known is not None:
        return known
    doc = _parse(text, source)
    picks = _check(doc, _Checker(text, source), plan)
    _remember(source, text, plan, picks)
    return picks


# ---- writing ------------------------------------------------------------------------------

def lock_path(path: Path) -> Path:
    """The sibling file writers lock: manifests/.launch.picks.json.lock."""
    return path.parent / f".{path.name}.lock"


@contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive lock of a picks file (a flock on its sibling lock file).

    The picks file itself cannot carry the lock: every write replaces it with a new file.
    The lock file is left in place, since removing it would let a waiter lock a file
    nobody else sees.
    """
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(lock, exc) from None
    try:
        if fcntl is not None:
            deadline = time.monotonic() + timeout
            pause = 0.002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"{path}: another imagebatch process has held its "
                                         f"lock ({lock}) for {timeout:.0f} s; try again when "
                                         "it is done") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
                except OSError:
                    break  # a filesystem without locks (some network mounts): go on unlocked
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


Change = tuple["str | None | _Keep", "int | None | _Keep"] | None


def _check_changes(plan: Plan, changes: Mapping[str, Change]) -> dict[str, Change]:
    keys = plan_keys(plan)
    out: dict[str, Change] = {}
    for path, change in changes.items():
        if path not in keys:
            raise PicksError(f"{printable(str(path))[:200]!r} is not an image of the plan of "
                             f"{plan.source}; `imagebatch plan {plan.source}` lists them")
        if change is not None:
            status, rating = change
            if status is not KEEP and status is not None and status not in STATUSES:
                raise PicksError(f'status must be "pick", "reject" or null, not {status!r}')
            if rating is not KEEP and rating is not None and (
                    isinstance(rating, bool) or not isinstance(rating, int)
                    or not 1 <= rating <= 5):
                raise PicksError(f"rating must be a whole number from 1 to 5 or null, "
                                 f"not {rating!r}")
        out[path] = change
    return out


def change_picks(path: Path, plan: Plan, changes: Mapping[str, Change]) -> tuple[Picks, Picks]:
    """update_picks, returning (the picks as they were just before, as they are now)."""
    path = Path(path)
    todo = _check_changes(plan, changes)
    keys = plan_keys(plan)
    with locked(path):
        before = load_picks(path, plan)  # as it is now; a broken file raises: never overwritten
        entries = dict(before.entries)
        for p, change in todo.items():
            if change is None:
                entries.pop(p, None)
                continue
            status, rating = change
            old = entries.get(p)
            current = old if old is not None and old.key == keys[p] else None
            if isinstance(status, _Keep):
                status = current.status if current is not None else None
            if isinstance(rating, _Keep):
                rating = current.rating if current is not None else None
            if status is None and rating is None:
                entries.pop(p, None)
            else:
                entries[p] = PickEntry(keys[p], status, rating)
        after = make_picks(plan.name, entries)
        exists = path.exists()
        if not exists and not after.entries:
            return before, after  # nothing decided, nothing to keep: no file
        # the file's canonical text is a function of the manifest's name and the entries
        # alone: comparing those says whether it would change, without writing it twice
        if not exists or before.manifest != plan.name or dict(before.entries) != entries:
            text = dumps(after)
            write_file(path, text.encode("utf-8"))
            # the entries kept passed load_picks' checks; the changed ones are those checks'
            # too when their paths and keys are ones it accepts: then the text just written
            # reads as `after`, and the next read of it need not check it again
            if all(path_problem(p) is None and _KEY.match(keys[p]) for p in todo):
                _remember(str(path), text, plan, after)
        return before, after


def update_picks(path: Path, plan: Plan, changes: Mapping[str, Change]) -> Picks:
    """Apply {path: (status, rating)} (None clears the entry) to the file as it is now, under
    its lock, and write it back atomically; the key comes from the plan. Returns the result."""
    return change_picks(path, plan, changes)[1]


__all__ = [
    "KEEP",
    "PICK",
    "REJECT",
    "PickCounts",
    "PickEntry",
    "Picks",
    "PicksError",
    "change_picks",
    "counts",
    "dumps",
    "load_picks",
    "lock_path",
    "locked",
    "make_picks",
    "path_problem",
    "picks_path",
    "plan_keys",
    "update_picks",
]

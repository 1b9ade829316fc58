"""`imagebatch init`: set up a repository to generate assets, writing only what is missing.

What it writes comes from package data (pipeline/templates/init/) or from the code itself
(the schema), so an installed wheel needs nothing from a source tree. A file that exists is
never overwritten without `--force`: it is reported as unchanged, or as different with the
command that shows how.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from .. import version
from ..errors import ManifestError, UsageError, printable

MANIFEST = "manifests/example.yaml"
SCHEMA = "imagebatch.schema.json"
MAKEFILE = "Makefile"
MAKE_INCLUDE = "imagebatch.mk"
WORKFLOW = ".github/workflows/imagebatch.yml"
DIFF_WORKFLOW = ".github/workflows/imagebatch-diff.yml"  # the plan diff of a pull request
GITIGNORE = ".gitignore"
PICKS = "manifests/example.picks.json"  # where the example's picks file goes (beside it)
# Where `--vendor-wheel` keeps the wheel the workflows install: a folder of the repository,
# since a CI runner can reach nothing on the machine that ran init.
VENDOR_DIR = "ci"

# GNU make reads the first of these that exists, so a repository with any of them already
# has its own make file: init then writes imagebatch.mk for it to include.
MAKEFILE_NAMES = ("GNUmakefile", "makefile", "Makefile")
# .gitignore lines that already keep outputs/ (a cache, rebuilt by `make assets`) out of git
OUTPUTS_RULES = frozenset({"outputs", "outputs/", "/outputs", "/outputs/",
                           "outputs/*", "/outputs/*", "outputs/**", "/outputs/**"})
# .gitignore lines that already keep every lock file out of git
LOCK_RULES = frozenset({"*.lock", ".*.lock", "**/*.lock", "**/.*.lock"})
GITIGNORE_HEAD = ("# imagebatch: outputs/ is a cache that `make assets` rebuilds; the rest is its "
                  "own\n# bookkeeping (locks, an export's record of this machine's files, files "
                  "being\n# written). Manifests, picks files and assets/ are committed.\n")
_INCLUDES_MK = re.compile(r"^[ \t]*-?s?include[ \t].*\bimagebatch\.mk\b", re.MULTILINE)
_PLACEHOLDER = "@IMAGEBATCH_REQUIREMENT@"


def _template(name: str) -> str:
    return (resources.files("imagebatch") / "templates" / "init" / name).read_text(
        encoding="utf-8")


def _validates(text: str) -> bool:
    from ..planning.manifest import load_plan

    with tempfile.TemporaryDirectory(prefix="imagebatch-init-") as tmp:
        path = Path(tmp) / PurePosixPath(MANIFEST).name
        path.write_text(text, encoding="utf-8")
        try:
            load_plan(str(path))
        except ManifestError:
            return False
    return True


@functools.lru_cache(maxsize=1)
def manifest_text() -> str:
    """The example manifest, with its `exports:` section when this version can read one."""
    base = _template("example.yaml")
    with_exports = base + "\n" + _template("example-exports.yaml")
    # The exports block is written only if the loader accepts it, so the example always
    # validates with the imagebatch that wrote it.
    return with_exports if _validates(with_exports) else base


def include_text() -> str:
    """imagebatch.mk: the make targets, for a repository that has its own Makefile."""
    return _template("imagebatch.mk")


def makefile_text() -> str:
    """A whole Makefile: the targets of imagebatch.mk and a `help` target as the default."""
    return include_text() + "\n" + _template("makefile-help.mk")


def default_requirement() -> str:
    """What the workflow installs by default: exactly this version, from the package index."""
    return f"imagebatch=={version()}"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where this copy of imagebatch was installed from, as a CI runner could install it."""

    requirement: str  # what the workflows install
    reachable: bool  # False: a folder or file on this machine, which no runner can reach
    source: str = ""  # where it came from, for the note (never with credentials)
    wheel: str | None = None  # the wheel file on this machine it was installed from


def _public(url: str) -> str:
    """`url` without credentials: a password, or a user name on http(s), which may be a token
    (an ssh user such as git@ is kept: it is no secret, and the URL needs it), and without a
    query, where a signed URL keeps its signature."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username and parts.password is None and parts.scheme.lower().startswith("ssh"):
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def origin_of(direct_url: str | None, this_version: str) -> Origin:
    """The Origin recorded by an installer's direct_url.json (PEP 610; None: no such record,
    an install from a package index)."""
    pinned = f"imagebatch=={this_version}"
    if direct_url is None:
        return Origin(pinned, True, "a package index")
    try:
        doc = json.loads(direct_url)
        url = doc["url"]
        if not isinstance(url, str) or not url:
            raise TypeError(url)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except (ValueError, TypeError, KeyError, RecursionError):
        return Origin(pinned, False, "an install record that cannot be read")
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):  # a folder (editable or not) or an archive on this machine
        path = url2pathname(parts.path)
        info = doc.get("dir_info")
        if isinstance(info, dict):
            return Origin(pinned, False, f"the folder {path}"
                          + (" (editable)" if info.get("editable") is True else ""))
        if isinstance(doc.get("vcs_info"), dict):
            return Origin(pinned, False, f"the repository {path}")
        wheel = path if path.endswith(".whl") else None
        return Origin(pinned, False, f"the file {path}", wheel)
    public = _public(url)
    if parts.query:  # a signed or token URL: without its query it is not the same download
        return Origin(pinned, False, f"{public} (a URL with a query, not written anywhere)")
    vcs = doc.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str) and \
            isinstance(vcs.get("commit_id"), str):
        # pinned to the commit, not to the branch or tag asked for: the runner installs the
        # same program, whatever the tag points at later
        spec = f"imagebatch @ {vcs['vcs']}+{public}@{vcs['commit_id']}"
        sub = doc.get("subdirectory")
        spec += f"#subdirectory={sub}" if isinstance(sub, str) and sub else ""
    else:  # an archive (a wheel or an sdist) at a URL, checked against its hash by pip
        spec = f"imagebatch @ {public}"
        info = doc.get("archive_info")
        hashes = info.get("hashes") if isinstance(info, dict) else None
        sha = hashes.get("sha256") if isinstance(hashes, dict) else None
        spec += f"#sha256={sha}" if isinstance(sha, str) and re.fullmatch(
            r"[0-9a-f]{64}", sha) else ""
    if any(ord(c) < 33 and c != " " or ord(c) == 127 for c in spec):
        return Origin(pinned, False, "an install record that cannot be read")
    return Origin(spec, True, public)


def installed_origin() -> Origin:
    """Where the imagebatch that runs was installed from (PEP 610's direct_url.json)."""
    from importlib.metadata import distributions

    # The copy an installer put in place (it wrote INSTALLER), not a build's stray
    # imagebatch.egg-info that a source tree on sys.path would show first.
    found = [d for d in distributions(name="imagebatch") if d.read_text("INSTALLER")]
    if not found:
        return Origin(default_requirement(), False, "a source tree that was never installed")
    return origin_of(found[0].read_text("direct_url.json"), version())


def _vendored(root: Path) -> str | None:
    """The wheel of this version a repository keeps in ci/ (as --vendor-wheel left it), as
    the workflows install it, or None."""
    folder = root / VENDOR_DIR
    found = sorted(folder.glob(f"imagebatch-{version()}-*.whl")) if folder.is_dir() else []
    return f"./{VENDOR_DIR}/{found[0].name}" if found else None


def read_wheel(path: str) -> tuple[str, bytes]:
    """(file name, bytes) of a wheel of this very version of imagebatch; else UsageError."""
    wheel = Path(path)
    name = wheel.name
    if not name.startswith(f"imagebatch-{version()}-") or not name.endswith(".whl"):
        raise UsageError(f"--vendor-wheel: {printable(path)!r} is not named as a wheel of "
                         f"imagebatch {version()} (imagebatch-{version()}-py3-none-any.whl); "
                         "build one with `make wheel` in imagebatch's source, or give this "
                         "version's")
    try:
        data = wheel.read_bytes()
        with zipfile.ZipFile(wheel) as zf:
            meta = zf.read(f"imagebatch-{version()}.dist-info/METADATA").decode(
                "utf-8", errors="replace")
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a wheel"
        raise UsageError(f"--vendor-wheel: cannot read {printable(path)}: {why}") from None
    if f"\nVersion: {version()}\n" not in meta:
        raise UsageError(f"--vendor-wheel: {printable(path)} is not imagebatch {version()}")
    return name, data


def check_requirement(spec: str) -> str:
    """`spec` stripped, or UsageError: one pip requirement on one line."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--requirement: empty; give a pip requirement such as "
                         f"{default_requirement()} or imagebatch @ git+https://HOST/ORG/"
                         "imagebatch@TAG")
    if any(ord(c) < 32 or ord(c) == 127 for c in spec):
        raise UsageError(f"--requirement: {printable(spec)!r} holds a control character or a "
                         "line break; give one pip requirement on one line")
    return spec


def workflow_text(requirement: str) -> str:
    """The scheduled workflow, installing `requirement` (a JSON string is a YAML scalar)."""
    return _template("workflow.yml").replace(_PLACEHOLDER, json.dumps(requirement,
                                                                      ensure_ascii=False))


def diff_workflow_text(requirement: str) -> str:
    """The pull-request workflow (`imagebatch diff --markdown`), installing `requirement`."""
    return _template("diff-workflow.yml").replace(_PLACEHOLDER, json.dumps(
        requirement, ensure_ascii=False))


@functools.lru_cache(maxsize=1)
def ignore_rules() -> tuple[str, ...]:
    """The lines init's .gitignore block holds, from the names the code gives those files."""
    from ..planning.exportplan import LOCK_FILE, STATE_FILE
    from ..planning.plan import TMP_PREFIX
    from ..storage.picks import SUFFIX, lock_path

    # outputs/ can be made again. The rest is bookkeeping no one commits: the lock beside
    # every picks file (.example.picks.json.lock), an export folder's lock and its state
    # file (which records this machine's file times, so it would change on every clone's
    # export; without it an export takes committed files with the bytes it would write as
    # its own, and leaves any other in place), and the temp files of a write in progress.
    return ("outputs/", lock_path(Path("*" + SUFFIX)).name, LOCK_FILE, STATE_FILE,
            f"{TMP_PREFIX}*")


def _has_rule(lines: set[str], rule: str) -> bool:
    if rule == "outputs/":
        return bool(lines & OUTPUTS_RULES)
    return rule in lines or (rule.endswith(".lock") and bool(lines & LOCK_RULES))


def gitignore_text(current: str | None) -> str:
    """`.gitignore` as init leaves it: `current` with the rules of init's block it lacks."""
    lines = {line.strip() for line in (current or "").splitlines()}
    missing = [rule for rule in ignore_rules() if not _has_rule(lines, rule)]
    if not missing:
        return current or ""
    block = GITIGNORE_HEAD + "".join(f"{rule}\n" for rule in missing)
    if not current:
        return block
    return current + ("\n" if not current.endswith("\n") else "") + block


def templates(requirement: str | None = None) -> dict[str, str]:
    """Every file init can write, by path, as it writes it into a new repository."""
    from ..planning.schema import schema_text

    return {
        MANIFEST: manifest_text(),
        SCHEMA: schema_text(),
        MAKEFILE: makefile_text(),
        MAKE_INCLUDE: include_text(),
        WORKFLOW: workflow_text(requirement or default_requirement()),
        DIFF_WORKFLOW: diff_workflow_text(requirement or default_requirement()),
        GITIGNORE: gitignore_text(None),
    }


@dataclass(frozen=True, slots=True)
class Item:
    """One file init manages in a repository: what it should hold and what it holds now."""

    path: str  # relative to the repository, with /
    wanted: str
    current: str | None  # None: missing
    note: str = ""
    binary: bool = False  # bytes held as surrogate-escaped text (a wheel): never shown

    @property
    def state(self) -> str:
        """missing, same or differs."""
        if self.current is None:
            return "missing"
        return "same" if self.current == self.wanted else "differs"


def _read(path: Path) -> str | None:
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        raise UsageError(f"{printable(str(path))} is a folder; imagebatch init would write a "
                         "file there")
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"cannot read {printable(str(path))}: {exc.strerror or exc}") from None


def _own_makefile(root: Path) -> str | None:
    """The name of the repository's own make file, or None when it has none but ours."""
    try:
        names = set(os.listdir(root))  # exact names, also on case-insensitive filesystems
    except FileNotFoundError:
        return None
    found = next((n for n in MAKEFILE_NAMES if n in names), None)
    if found == MAKEFILE:
        text = _read(root / MAKEFILE) or ""
        # a Makefile init wrote (edited or not) is still init's: compared, never included
        if text.splitlines()[:1] == makefile_text().splitlines()[:1]:
            return None
    return found


def survey(root: Path, requirement: str, wheel: tuple[str, bytes] | None = None
           ) -> tuple[list[Item], str | None]:
    """Every managed file of `root` and the repository's own make file (None if none);
    `wheel` (name, bytes) is kept in ci/."""
    from ..planning.schema import schema_text

    own_make = _own_makefile(root)
    make = (MAKE_INCLUDE, include_text()) if own_make else (MAKEFILE, makefile_text())
    wanted = [
        (MANIFEST, manifest_text(), ""),
        (SCHEMA, schema_text(), ""),
        (*make, ""),
        (WORKFLOW, workflow_text(requirement), f"installs {requirement}"),
        (DIFF_WORKFLOW, diff_workflow_text(requirement), "the plan diff of pull requests"),
    ]
    if wheel is not None:
        wanted.append((f"{VENDOR_DIR}/{wheel[0]}",
                       wheel[1].decode("utf-8", errors="surrogateescape"),
                       "the wheel the workflows install"))
    items = []
    for rel, text, note in wanted:
        for parent in reversed(PurePosixPath(rel).parents):
            folder = root / parent
            if str(parent) != "." and folder.exists() and not folder.is_dir():
                raise UsageError(f"{printable(str(folder))} is a file; imagebatch init needs a "
                                 "folder there")
        items.append(Item(rel, text, _read(root / rel), note, binary=rel.endswith(".whl")))
    ignore = _read(root / GITIGNORE)
    items.append(Item(GITIGNORE, gitignore_text(ignore), ignore,
                      "ignores outputs/, locks and temp files"))
    return items, own_make


def _ignored(root: Path, path: str) -> str | None:
    """The git rule that would ignore `path`, or None (none, or no git)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        proc = subprocess.run([git, "-C", str(root), "check-ignore", "-v", "--no-index", path],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:  # 1: not ignored; 128: not a git repository
        return None
    return proc.stdout.split("\t")[0].strip() or "a rule"


def _diff(item: Item) -> str:
    if item.current is None:
        return f"{item.path}: missing; `imagebatch init` writes it\n"
    if item.binary:
        return f"{item.path}: differs from the wheel given (binary; not shown)\n"
    lines = difflib.unified_diff(
        item.current.splitlines(keepends=True), item.wanted.splitlines(keepends=True),
        fromfile=f"{item.path} (yours)", tofile=f"{item.path} (imagebatch init {version()})")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def print_command(name: str, requirement: str | None, out: TextIO) -> int:
    """`imagebatch init --print FILE`: FILE as init would write it into a new repository."""
    files = templates(requirement)
    key = str(PurePosixPath(name))  # ./Makefile and Makefile name one file
    if key not in files:
        raise UsageError(f"--print: {printable(name)!r} is not a file init writes; choose from "
                         + ", ".join(files))
    out.write(files[key])
    return 0


def init_command(directory: str = ".", *, force: bool = False, requirement: str | None = None,
                 diff: bool = False, print_file: str | None = None,
                 vendor_wheel: str | None = None, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """`imagebatch init`: write what is missing, report every file; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    requirement = check_requirement(requirement) if requirement is not None else None
    wheel = read_wheel(vendor_wheel) if vendor_wheel is not None else None
    if wheel is not None:
        requirement = f"./{VENDOR_DIR}/{wheel[0]}"  # pip reads it from the checkout
    root = Path(directory)
    if print_file is None and root.exists() and not root.is_dir():
        raise UsageError(f"{printable(directory)} is not a folder")
    if requirement is None and print_file is None:
        requirement = _vendored(root)  # a wheel kept in ci/ earlier stays what CI installs
    origin = installed_origin() if requirement is None else None
    if origin is not None:
        requirement = origin.requirement
    unreachable = origin if origin is not None and not origin.reachable else None
    if print_file is not None:
        code = print_command(print_file, requirement, out)
        if unreachable and str(PurePosixPath(print_file)) in (WORKFLOW, DIFF_WORKFLOW):
            _unreachable(err, unreachable, ".")
        return code
    items, own_make = survey(root, requirement or default_requirement(), wheel)
    if diff:
        changed = [item for item in items if item.state != "same"]
        for item in changed:
            out.write(_diff(item))
        if not changed:
            print(f"{_shown(root)}: every file is as imagebatch init {version()} writes it",
                  file=out)
        code = 1 if changed else 0
    else:
        code = _write_all(root, directory, items, own_make, force, out)
    if unreachable:  # last, where it is read: the workflows written cannot install this copy
        _unreachable(err, unreachable, directory)
    return code


def _shown(root: Path) -> str:
    return printable(str(root.resolve()))


def _write_all(root: Path, directory: str, items: list[Item], own_make: str | None,
               force: bool, out: TextIO) -> int:
    from ..storage.store import write_file

    created = not root.exists()
    print(f"imagebatch init {version()} in {_shown(root)}" + (" (new folder)" if created else ""),
          file=out)
    kept: list[str] = []
    wrote = 0
    for item in items:
        state, note = item.state, f" ({item.note})" if item.note else ""
        if state == "same":
            verb = "unchanged"
        elif item.path == GITIGNORE:  # only ever gains the outputs/ rule: no --force needed
            verb = "wrote" if state == "missing" else "added to"
        elif state == "differs" and not force:
            verb, note = "differs", " (left as it is)"
            kept.append(item.path)
        else:
            verb = "replaced" if state == "differs" else "wrote"
        if verb not in ("unchanged", "differs"):
            write_file(root / item.path, item.wanted.encode("utf-8", errors="surrogateescape"))
            wrote += 1
        print(f"  {verb:<10} {item.path}{note}", file=out)

    arg = "" if directory in (".", "") else " " + printable(shlex.quote(directory))
    if own_make and not _INCLUDES_MK.search(_read(root / own_make) or ""):
        _say(out, f"Your {own_make} is left as it is. Add this line to it for the imagebatch "
                  "targets (make assets, plan, status, sheet, review, export):",
             f"    include {MAKE_INCLUDE}")
    rule = _ignored(root, PICKS)
    if rule:
        _say(out, f"Note: git ignores {PICKS} ({printable(rule)}). Picks files hold the "
                  "team's choices and belong in the repository: add the line `!*.picks.json` "
                  f"to {GITIGNORE}, or narrow that rule.")
    for item in items:
        rule = _ignored(root, item.path) if item.binary else None
        if rule:
            _say(out, f"Note: git ignores {item.path} ({printable(rule)}), which the "
                      f"workflows install: add the line `!{VENDOR_DIR}/*.whl` to {GITIGNORE}, "
                      "or narrow that rule.")
    if kept:
        many = len(kept) > 1
        _say(out, f"{len(kept)} file{'s' if many else ''} differ{'' if many else 's'} from "
                  f"what imagebatch init {version()} writes and {'were' if many else 'was'} "
                  f"left as {'they are' if many else 'it is'}:",
             f"  imagebatch init{arg} --diff    shows how\n"
             f"  imagebatch init{arg} --force   replaces every file that differs\n"
             "  imagebatch init --print FILE > FILE   (in the repository) replaces one")
    if wrote == 0 and not kept:
        print("Everything is in place; nothing was written.", file=out)
    elif wrote:
        where = f"cd{arg} && " if arg else ""
        after = f" (once {own_make} includes {MAKE_INCLUDE})" if own_make else ""
        _say(out, f"Next: {where}make assets{after}",
             "  makes the images of every manifest in manifests/ into outputs/, offline on the",
             "  embedded server until DIFFUSION_URL is set, and exports the picked ones into",
             f"  assets/. {WORKFLOW}",
             "  names the repository secrets the nightly run needs;",
             f"  {DIFF_WORKFLOW} puts `imagebatch diff` on pull requests.")
    return 0


def _unreachable(err: TextIO, origin: Origin, directory: str) -> None:
    """Say, on stderr, that CI cannot install the imagebatch that runs, and the ways out."""
    arg = "" if directory in (".", "") else " " + printable(shlex.quote(directory))
    wheel = shlex.quote(origin.wheel) if origin.wheel else \
        f"dist/imagebatch-{version()}-py3-none-any.whl"
    built = "" if origin.wheel else " (built with `make wheel` in imagebatch's source)"
    _say(err, f"note: this imagebatch was installed from {printable(origin.source)}, which "
              f"a CI runner cannot reach: the workflows install {origin.requirement} from the "
              "package index instead, which works only once imagebatch is published there. "
              "Give them an imagebatch they can install: a tag on your git server "
              "(HOST/OWNER/imagebatch.git: where your team keeps imagebatch), or a wheel kept "
              f"in the repository's {VENDOR_DIR}/ folder{built}:",
         f"  imagebatch init{arg} --force --requirement "
         f"'imagebatch @ git+https://HOST/OWNER/imagebatch.git@v{version()}'",
         f"  imagebatch init{arg} --force --vendor-wheel {printable(wheel)}")


def _say(out: TextIO, paragraph: str, *lines: str) -> None:
    """A blank line, `paragraph` wrapped to a terminal's width, then `lines` as they are."""
    print("\n" + textwrap.fill(paragraph, width=88), *lines, sep="\n", file=out)

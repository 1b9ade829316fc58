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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TextIO

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

# GNU make reads the first of these that exists, so a repository with any of them already
# has its own make file: init then writes imagebatch.mk for it to include.
MAKEFILE_NAMES = ("GNUmakefile", "makefile", "Makefile")
# .gitignore lines that already keep outputs/ (a cache, rebuilt by `make assets`) out of git
OUTPUTS_RULES = frozenset({"outputs", "outputs/", "/outputs", "/outputs/",
                           "outputs/*", "/outputs/*", "outputs/**", "/outputs/**"})
GITIGNORE_BLOCK = "# imagebatch outputs: a cache that `make assets` rebuilds\noutputs/\n"
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


def gitignore_text(current: str | None) -> str:
    """`.gitignore` as init leaves it: `current` with an outputs/ rule added if it has none."""
    if current is None:
        return GITIGNORE_BLOCK
    if any(line.strip() in OUTPUTS_RULES for line in current.splitlines()):
        return current
    return current + ("\n" if current and not current.endswith("\n") else "") + GITIGNORE_BLOCK


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
        GITIGNORE: GITIGNORE_BLOCK,
    }


@dataclass(frozen=True, slots=True)
class Item:
    """One file init manages in a repository: what it should hold and what it holds now."""

    path: str  # relative to the repository, with /
    wanted: str
    current: str | None  # None: missing
    note: str = ""

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


def survey(root: Path, requirement: str) -> tuple[list[Item], str | None]:
    """Every managed file of `root` and the repository's own make file (None if none)."""
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
    items = []
    for rel, text, note in wanted:
        for parent in reversed(PurePosixPath(rel).parents):
            folder = root / parent
            if str(parent) != "." and folder.exists() and not folder.is_dir():
                raise UsageError(f"{printable(str(folder))} is a file; imagebatch init needs a "
                                 "folder there")
        items.append(Item(rel, text, _read(root / rel), note))
    ignore = _read(root / GITIGNORE)
    items.append(Item(GITIGNORE, gitignore_text(ignore), ignore, "ignores outputs/"))
    return items, own_make


def _picks_ignored(root: Path) -> str | None:
    """The git rule that would ignore the example's picks file, or None (none, or no git)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        proc = subprocess.run([git, "-C", str(root), "check-ignore", "-v", "--no-index", PICKS],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:  # 1: not ignored; 128: not a git repository
        return None
    return proc.stdout.split("\t")[0].strip() or "a rule"


def _diff(item: Item) -> str:
    if item.current is None:
        return f"{item.path}: missing; `imagebatch init` writes it\n"
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
                 out: TextIO | None = None) -> int:
    """`imagebatch init`: write what is missing, report every file; the exit code."""
    out = out or sys.stdout
    requirement = check_requirement(requirement) if requirement is not None else None
    if print_file is not None:
        return print_command(print_file, requirement, out)
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{printable(directory)} is not a folder")
    items, own_make = survey(root, requirement or default_requirement())
    if diff:
        changed = [item for item in items if item.state != "same"]
        for item in changed:
            out.write(_diff(item))
        if not changed:
            print(f"{_shown(root)}: every file is as imagebatch init {version()} writes it",
                  file=out)
        return 1 if changed else 0
    return _write_all(root, directory, items, own_make, force, out)


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
    rule = _picks_ignored(root)
    if rule:
        _say(out, f"Note: git ignores {PICKS} ({printable(rule)}). Picks files hold the "
                  "team's choices and belong in the repository: add the line `!*.picks.json` "
                  f"to {GITIGNORE}, or narrow that rule.")
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
             f"  embedded server until DIFFUSION_URL is set. {WORKFLOW}",
             "  names the repository secrets the nightly run needs;",
             f"  {DIFF_WORKFLOW} puts `imagebatch diff` on pull requests.")
    return 0


def _say(out: TextIO, paragraph: str, *lines: str) -> None:
    """A blank line, `paragraph` wrapped to a terminal's width, then `lines` as they are."""
    print("\n" + textwrap.fill(paragraph, width=88), *lines, sep="\n", file=out)

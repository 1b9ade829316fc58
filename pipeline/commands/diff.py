"""`imagebatch diff`: what a manifest change does to its plan, against a git revision or a
file; sends nothing, writes nothing.

The manifest as it is on disk is compared with the same path at a revision (by default the
merge base of HEAD with the default branch) read through `git` (a subprocess with no shell,
its output bounded), or with another manifest file. The pure comparison is
`imagebatch.planning.plandiff`; the renderings are `imagebatch.commands.diffreport`.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from ..errors import ImagebatchError, ManifestError, UsageError, printable
from ..planning import apispec, config, costs
from ..planning.manifest import (
    DEFAULT_MAX_JOBS,
    MAX_FILE_BYTES,
    MAX_INPUT_BYTES,
    load_plan,
    load_plan_bytes,
)
from ..planning.plan import Plan
from ..planning.plandiff import Decision, diff_plans
from ..running.options import DEFAULT_OUT
from ..storage import picks
from ..storage.context import CacheUse
from ..storage.context import resolve as resolve_context
from ..storage.store import DONE, job_states
from . import diffreport
from .diffreport import FROM_CHANGE, FROM_OUTPUTS, DiffReport, ManifestDiff
from .preview import restorable_keys, write_utf8

GIT_TIMEOUT = 60.0  # seconds for one git command: they read a few objects, nothing more
MAX_GIT_OUTPUT = 64 * 1024  # of a git command's answer other than a file's contents
#: Where the default revision is looked for, in order: the remote's default branch, then
#: main and master (local, then origin's).
DEFAULT_BRANCHES = ("refs/heads/main", "refs/remotes/origin/main", "refs/heads/master",
                    "refs/remotes/origin/master")


class GitError(UsageError):
    """git is missing, or cannot answer about this repository or revision (exit 2)."""


@dataclass(frozen=True, slots=True)
class Repo:
    """A git work tree: its top folder, resolved."""

    top: Path

    def git(self, *args: str, limit: int = MAX_GIT_OUTPUT) -> tuple[int, bytes, str]:
        """(exit status, stdout, stderr's first line) of `git args` in the top folder."""
        return run_git(self.top, args, limit=limit)


def run_git(cwd: Path, args: Sequence[str], *, limit: int = MAX_GIT_OUTPUT
            ) -> tuple[int, bytes, str]:
    """Run git with no shell, no prompt and no pager; stdout is read up to `limit` bytes
    (past it the process is stopped and GitError raised), stderr kept to its first line."""
    git = shutil.which("git")
    if git is None:
        raise GitError("git is not installed; `imagebatch diff` reads old revisions through "
                       "git (or give --against FILE)")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0",
           "GIT_LITERAL_PATHSPECS": "1", "GIT_PAGER": "cat", "LC_ALL": "C"}
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([git, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, env=env)
        except OSError as exc:
            raise GitError(f"cannot run git: {exc.strerror or exc}") from None
        assert proc.stdout is not None
        chunks: list[bytes] = []
        total = 0
        # a git that hangs (a lock, a stalled network filesystem) is stopped: reading its
        # output would otherwise wait for ever
        killed = threading.Event()

        def stop() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(GIT_TIMEOUT, stop)
        timer.start()
        try:
            while total <= limit:
                chunk = proc.stdout.read(min(1 << 16, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > limit:
                proc.kill()
                raise GitError(f"git {args[0]} answered more than {limit:,} bytes")
            code = proc.wait(timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise GitError(f"git {args[0]} took more than {GIT_TIMEOUT:g} s") from None
        finally:
            timer.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        err.seek(0)
        first = err.read(4096).decode("utf-8", "replace").strip().splitlines()
    if killed.is_set():
        raise GitError(f"git {args[0]} took more than {GIT_TIMEOUT:g} s and was stopped")
    return code, b"".join(chunks), printable(first[0]) if first else ""


def find_repo(folder: Path) -> Repo:
    """The git work tree `folder` is in; GitError (exit 2) when it is in none."""
    code, out, err = run_git(folder, ["rev-parse", "--show-toplevel"])
    if code != 0:
        why = f" ({err})" if err and "not a git repository" not in err else ""
        raise GitError(f"{printable(str(folder))} is not in a git repository{why}; "
                       "`imagebatch diff --against FILE` compares with another manifest file")
    return Repo(Path(os.fsdecode(out.rstrip(b"\n"))).resolve())


def resolve(repo: Repo, rev: str) -> str:
    """The commit `rev` names (a full hash); GitError (exit 2) when it names none."""
    if not rev or rev.startswith("-") or any(ord(c) < 32 for c in rev):
        raise GitError(f"--against {printable(rev)!r}: not a revision (nor a file)")
    code, out, _err = repo.git("rev-parse", "--verify", "--quiet", "--end-of-options",
                               f"{rev}^{{commit}}")
    if code != 0:
        raise GitError(f"--against {printable(rev)!r}: no such revision in "
                       f"{printable(str(repo.top))} (nor a file); fetch it first "
                       "(`git fetch origin BRANCH`), or name a branch, tag or commit")
    return out.decode().strip()


def default_base(repo: Repo) -> tuple[str, str]:
    """(how to say it, the commit) of the default comparison: the merge base of HEAD with the
    default branch (origin/HEAD when set, else main, else master)."""
    code, head, _ = repo.git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if code != 0:
        raise GitError(f"{printable(str(repo.top))} has no commit yet; commit first, or give "
                       "--against REV or --against FILE")
    candidates = []
    code, ref, _ = repo.git("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD")
    if code == 0 and ref.strip():
        candidates.append(ref.decode().strip())
    candidates += DEFAULT_BRANCHES
    for ref_name in candidates:
        code, _, _ = repo.git("rev-parse", "--verify", "--quiet", f"{ref_name}^{{commit}}")
        if code != 0:
            continue
        short = ref_name.removeprefix("refs/heads/").removeprefix("refs/remotes/")
        code, base, _ = repo.git("merge-base", "HEAD", ref_name)
        if code != 0:
            raise GitError(f"HEAD and {short} have no common history in "
                           f"{printable(str(repo.top))}; give --against REV")
        sha = base.decode().strip()
        return f"{short} (merge base {sha[:12]})", sha
    raise GitError(f"{printable(str(repo.top))} has no default branch to compare with (no "
                   "origin/HEAD, main or master); give --against REV (a branch, tag or "
                   "commit) or --against FILE")


def read_at(repo: Repo, commit: str, rel: str, *, limit: int | None = None,
            what: str = "a manifest") -> bytes | str | None:
    """The bytes of `rel` (a path from the top, with /) at `commit`; None when it is not
    there; a str saying why when it is there but is not a file (a folder, a link) or is over
    `limit` bytes (`what` may be at most that)."""
    limit = MAX_FILE_BYTES if limit is None else limit  # a manifest's, unless told
    code, out, err = repo.git("ls-tree", "-z", "--full-tree", commit, "--", rel)
    if code != 0:
        raise GitError(f"git ls-tree failed at {commit[:12]}: {err or code}")
    entry = out.split(b"\0", 1)[0]
    if not entry:
        return None
    meta, _tab, _name = entry.partition(b"\t")
    mode, kind, obj = meta.decode().split(" ")[:3]
    if kind != "blob":
        return "is a folder there, not a file" if kind == "tree" else f"is a {kind} there"
    if mode == "120000":
        return "is a symbolic link there (not followed)"
    code, size, _ = repo.git("cat-file", "-s", obj)
    if code == 0 and int(size.strip() or 0) > limit:
        return f"is {int(size.strip()):,} bytes there; {what} may be at most {limit:,}"
    code, data, err = repo.git("cat-file", "blob", obj, limit=limit)
    if code != 0:
        raise GitError(f"git cat-file failed at {commit[:12]}: {err or code}")
    return data


def _repo_path(manifest: str) -> tuple[Path, PurePosixPath]:
    """(an existing folder the manifest is in or under, the rest of its path from there)."""
    path = Path(manifest).absolute()
    folder, rest = path.parent, [path.name]
    while not folder.is_dir() and folder != folder.parent:
        rest.insert(0, folder.name)
        folder = folder.parent
    return folder.resolve(), PurePosixPath(*rest)


@dataclass(frozen=True, slots=True)
class _Old:
    """The old side of one manifest: where it was read, what was there."""

    source: str
    state: str  # ok | missing | invalid
    plan: Plan | None
    problems: tuple[str, ...] = ()


def _inputs_at(repo: Repo, commit: str, manifest_rel: str) -> Callable[[str], bytes]:
    """Reads an input image (`image:`, relative to the manifest) as it was at `commit`, so
    that a changed input image shows as a changed job; OSError when it was not there."""
    folder = posixpath.dirname(manifest_rel)

    def read(value: str) -> bytes:
        rel = posixpath.normpath(posixpath.join(folder, value))
        if rel.startswith("../") or rel == ".." or posixpath.isabs(value):
            raise OSError(f"{value!r} is outside the repository")
        found = read_at(repo, commit, rel, limit=MAX_INPUT_BYTES, what="an input image")
        if found is None:  # not there then: a prompts lock not yet written reads as none
            raise FileNotFoundError(f"not in {commit[:12]}")
        if isinstance(found, str):
            raise OSError(found)
        return found

    return read


def _old_plan(data: bytes | str | None, source: str, model: str, max_jobs: int,
              providers: tuple[apispec.Provider, ...],
              read_input: Callable[[str], bytes] | None = None) -> _Old:
    if data is None:
        return _Old(source, "missing", None)
    if isinstance(data, str):
        return _Old(source, "invalid", None, (f"{source}: {data}",))
    try:
        return _Old(source, "ok", load_plan_bytes(data, source, max_jobs=max_jobs,
                                                  default_model=model, providers=providers,
                                                  read_input=read_input))
    except ManifestError as exc:
        return _Old(source, "invalid", None,
                    tuple([*exc.unreadable, *(str(p) for p in exc.problems)]))


def _old_file(path: str, model: str, max_jobs: int, providers: tuple[apispec.Provider, ...]
              ) -> _Old:
    try:
        return _Old(path, "ok", load_plan(path, max_jobs=max_jobs, default_model=model,
                                          providers=providers))
    except ManifestError as exc:
        return _Old(path, "invalid", None,
                    tuple([*exc.unreadable, *(str(p) for p in exc.problems)]))


def _decisions(manifest: str) -> tuple[Mapping[str, Decision], str | None, str | None]:
    """(the picks file's entries, its path when it exists, a note when it cannot be read).

    The picks file read is the one beside the manifest now (the working tree): it is the
    one the new plan will be judged against once the change is merged."""
    at = picks.picks_path(manifest)
    if not at.exists():
        return {}, None, None
    try:
        return picks.load_picks(at).entries, str(at), None
    except ImagebatchError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {}, str(at), (f"the picks file {at} cannot be read, so no stale pick is "
                             f"named: {first}")


def _renamed_from(repo: Repo, commit: str, label: str, rel: str, name: str, model: str,
                  max_jobs: int, providers: tuple[apispec.Provider, ...]
                  ) -> tuple[_Old, str] | None:
    """The old side of a manifest that was not at `rel` at `commit`: a manifest of the same
    folder there, gone from the work tree now, whose plan has the same `name:` (so the same
    outputs folder and images): (its old plan, its path); None when there is none."""
    folder = posixpath.dirname(rel)
    code, out, _err = repo.git("ls-tree", "-z", "--name-only", "--full-tree", commit, "--",
                               f"{folder}/" if folder else ".")
    if code != 0:
        return None
    for candidate in out.decode("utf-8", "surrogateescape").split("\0"):
        if not candidate.endswith((".yaml", ".yml")) or candidate == rel or \
                (repo.top / candidate).exists():
            continue
        old = _old_plan(read_at(repo, commit, candidate), f"{label}:{candidate}", model,
                        max_jobs, providers, _inputs_at(repo, commit, candidate))
        if old.state == "ok" and old.plan is not None and old.plan.name == name:
            return old, candidate
    return None


def _same_file(manifest: str, repo_rel: str) -> bool:
    """Whether a manifest given on the command line is the repository path `repo_rel`."""
    folder, rest = _repo_path(manifest)
    try:
        top = find_repo(folder).top
        return (folder.relative_to(top) / rest).as_posix() == repo_rel
    except (ImagebatchError, ValueError):
        return False


def diff_command(
    manifests: Sequence[str], *, against: str | None = None, as_json: bool = False,
    as_markdown: bool = False, price: str | None = None, out_dir: Path = DEFAULT_OUT,
    local: bool = False, env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,),
    max_jobs: int = DEFAULT_MAX_JOBS, env: Mapping[str, str] | None = None,
    out: TextIO | None = None, cache: str | None = None,
) -> int:
    """`imagebatch diff`: each manifest's plan now against its plan at a revision or in a
    file; what a run would send and cost; the picks that go stale. Sends nothing."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    per_image = costs.price_from(price, env)  # a bad price is refused before anything is read
    against_file = against if against is not None and os.path.isfile(against) else None
    if against_file is not None and len(manifests) > 1:
        raise UsageError(f"--against {printable(against_file)}: a file is compared with one "
                         f"manifest, not {len(manifests)}")
    present = [m for m in manifests if os.path.exists(m)]
    # the manifests as they are: checked as `run` checks them, every problem at once, and
    # judged against the backends and shared cache `run` would use
    ctx = resolve_context(present, env=env, env_prefixes=env_prefixes, local=local,
                          out_dir=out_dir, max_jobs=max_jobs, cache=cache,
                          use_cache=CacheUse.ON)
    plans = dict(zip(present, ctx.plans, strict=True))
    model = config.default_model(env, ctx.prefixes[0])
    # both sides planned for the providers `run` would send to: the same keys as a run's
    providers = ctx.providers
    judged = ctx.judged

    olds: dict[str, _Old] = {}
    renamed: dict[str, str] = {}  # manifest -> the old file it was renamed from (repo path)
    against_doc: dict[str, Any]
    if against_file is not None:
        olds[manifests[0]] = _old_file(against_file, model, max_jobs, providers)
        label, against_doc = against_file, {"kind": "file", "path": against_file}
    else:
        repos: dict[Path, tuple[Repo, str, str]] = {}
        label, against_doc = "", {}
        for m in manifests:
            folder, rest = _repo_path(m)
            repo = find_repo(folder)
            if repo.top not in repos:
                if against is not None:
                    commit = resolve(repo, against)
                    shown, name = against, against
                else:
                    shown, commit = default_base(repo)
                    name = commit[:12]
                repos[repo.top] = (repo, commit, name)
                label = shown if not label else f"{label}; {shown}"
                against_doc = {"kind": "revision", "revision": against, "commit": commit,
                               "merge_base": against is None, "text": shown}
            repo, commit, name = repos[repo.top]
            try:
                rel = (folder.relative_to(repo.top) / rest).as_posix()
            except ValueError:  # git names another top than the folder's real path
                raise GitError(f"{printable(m)}: cannot tell its path inside "
                               f"{printable(str(repo.top))}") from None
            olds[m] = _old_plan(read_at(repo, commit, rel), f"{name}:{rel}", model, max_jobs,
                                providers, _inputs_at(repo, commit, rel))
            new_plan = plans.get(m)
            if olds[m].state == "missing" and new_plan is not None:
                found = _renamed_from(repo, commit, name, rel, new_plan.name, model, max_jobs,
                                      providers)
                if found is not None:
                    olds[m], renamed[m] = found
    # the old file of a rename, given too (a diff without rename detection names both): its
    # jobs are compared under the new file's name, not shown all removed
    gone = set(renamed.values())

    results = []
    for m in manifests:
        old = olds[m]
        new = plans.get(m)
        if new is None and any(_same_file(m, g) for g in gone):
            continue
        if new is None and old.state != "ok":
            raise UsageError(f"{printable(m)}: no such manifest file, now or in "
                             f"{printable(old.source)}")
        entries, picks_file, picks_note = _decisions(m)
        d = diff_plans(old.plan, new, entries)
        name = (new or old.plan).name  # type: ignore[union-attr]
        root = Path(out_dir) / name
        notes = [picks_note] if picks_note else []
        if m in renamed:
            notes.append(f"renamed from {renamed[m]} (the same `name:`, so the same outputs "
                         "folder): compared with it")
        if new is None:
            to_send, basis = 0, FROM_CHANGE
        elif root.is_dir():
            # the one definition of done, against the backends `run` would use
            states = job_states(new.jobs, root, judged)
            # a final failure is held back by `run`: not sent, not paid for
            sending_states = [s for s in states if s.state != DONE and not s.final]
            to_send, basis = len(sending_states), FROM_OUTPUTS
        else:
            to_send, basis = len(d.regenerated), FROM_CHANGE
        if new is not None and to_send:
            # what the shared cache holds is restored by a run, not paid for (as `plan`
            # counts it: `cache`, else $IMAGEBATCH_CACHE; a listing, nothing downloaded)
            fills = restorable_keys(new.jobs, ctx)
            if fills:
                sending = ({s.job.key for s in sending_states}
                           if basis == FROM_OUTPUTS else {j.key for j in d.regenerated})
                restored = len(sending & fills)
                if restored:
                    to_send -= restored
                    notes.append(f"{restored} of the jobs to make are in the shared cache: "
                                 "a run restores them without a request (not counted)")
        if old.state == "invalid":
            notes.append(f"{old.source} has the problems above; its jobs cannot be compared, "
                         "so every job of the plan now is shown as added")
        results.append(ManifestDiff(
            manifest=m, name=name, old_source=old.source, old_state=old.state,
            new_state="ok" if new is not None else "missing", diff=d, to_send=to_send,
            to_send_from=basis, outputs=str(root), picks_file=picks_file, notes=tuple(notes),
            problems=old.problems))
    report = DiffReport(against=label, against_doc=against_doc, price=per_image,
                        manifests=tuple(results))
    if as_json:
        write_utf8(diffreport.json_text(report), out)
    elif as_markdown:
        write_utf8(diffreport.markdown(report), out)
    else:
        write_utf8(diffreport.text(report), out)
    return 0

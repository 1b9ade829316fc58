"""PURE: the prompts lock: prompts a chat model wrote from a job's brief, frozen in a file.

`imagebatch expand M` writes `<stem>.prompts.lock` beside the manifest; `plan` and `run`
read only that file (no network at plan time, the same plan on every machine). Each entry
holds the brief it came from and the SHA-256 of the brief (with its count, vary and keep),
so a brief edited since is seen as stale. Nothing here touches the disk, the network or the
clock: bytes in, prompts out; entries in, text out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ManifestError, Problem, text_problem
from .apispec import MAX_PROMPT_CHARS

# YAML inside, but not named *.yaml: `manifests/*.yaml` (make assets, the pull-request diff,
# `validate manifests/*.yaml`) must not take a lock for a manifest.
LOCK_SUFFIX = ".prompts.lock"
MAX_LOCK_BYTES = 8 * 1024 * 1024
MAX_COUNT = 100  # prompts one brief may ask for: a reviewer reads every one of them


def lock_name(manifest: str) -> str:
    """The lock file's name (no folder) for a manifest path: `<stem>.prompts.lock`."""
    return Path(manifest).stem + LOCK_SUFFIX


@dataclass(frozen=True, slots=True)
class Brief:
    """A job's `prompts:` block: what to ask the chat model for."""

    job_id: str
    brief: str
    count: int
    vary: str = ""
    keep: str = ""

    @property
    def digest(self) -> str:
        """SHA-256 of the brief, count, vary and keep: changes whenever the ask does."""
        ask = {"brief": self.brief, "count": self.count, "vary": self.vary, "keep": self.keep}
        text = json.dumps(ask, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One job's prompts in the lock, and what they were written from."""

    job_id: str
    brief: str
    digest: str  # Brief.digest of the brief they were written from
    model: str
    written: str  # UTC time, ISO 8601
    prompts: tuple[str, ...]
    vary: str = ""
    keep: str = ""
    count: int = 0
    # (line, column) of each prompt in the lock file, for located errors
    locs: tuple[tuple[int, int], ...] = field(default=(), compare=False)


def prompts_problem(prompts: Sequence[Any], count: int) -> str | None:
    """Why a list of prompts cannot be used for a brief asking `count`, or None."""
    if len(prompts) != count:
        return f"{len(prompts)} prompts for a brief that asks for {count}"
    seen: set[str] = set()
    for i, prompt in enumerate(prompts, 1):
        if not isinstance(prompt, str) or not prompt.strip():
            return f"prompt {i} is empty"
        if len(prompt) > MAX_PROMPT_CHARS:
            return (f"prompt {i} is {len(prompt):,} characters; the API allows at most "
                    f"{MAX_PROMPT_CHARS:,}")
        if prompt.strip() in seen:
            return f"prompt {i} is a duplicate of an earlier one"
        seen.add(prompt.strip())
    return None


def _loc(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _scalar(node: Node | None) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else ""


def parse_lock(data: bytes, source: str) -> dict[str, Entry]:
    """job id -> Entry of a lock file's bytes; ManifestError located in `source`."""
    text, problem = text_problem(data, source, MAX_LOCK_BYTES, "a prompts lock")
    if problem is not None:
        raise ManifestError([problem])

    def bad(node: Node | None, path: str, message: str) -> ManifestError:
        line, col = _loc(node) if node is not None else (1, 1)
        return ManifestError([Problem(source, line, col, path, message + "; fix it by hand "
                                      "or delete it and run `imagebatch expand`")])

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise ManifestError([Problem(source, line, col, "", f"is not valid YAML: "
                                     f"{getattr(exc, 'problem', None) or exc}")]) from None
    if not isinstance(root, MappingNode):
        raise bad(root, "", "must be a mapping with `version: 1` and `jobs:`")
    top = {_scalar(k): v for k, v in root.value}
    if _scalar(top.get("version")) != "1":
        raise bad(top.get("version", root), "version", "must be 1")
    jobs = top.get("jobs")
    if not isinstance(jobs, MappingNode):
        raise bad(jobs or root, "jobs", "must be a mapping of job id to its prompts")
    out: dict[str, Entry] = {}
    for knode, vnode in jobs.value:
        job_id = _scalar(knode)
        where = f"jobs.{job_id}"
        if not isinstance(vnode, MappingNode):
            raise bad(vnode, where, "must be a mapping (brief, brief_sha256, prompts, ...)")
        m = {_scalar(k): v for k, v in vnode.value}
        items = m.get("prompts")
        if not isinstance(items, SequenceNode):
            raise bad(items or vnode, f"{where}.prompts", "must be a list of prompts")
        prompts: list[str] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items.value):
            value = _scalar(item)
            if not isinstance(item, ScalarNode) or not value.strip():
                raise bad(item, f"{where}.prompts[{i}]", "is empty; a prompt is text")
            if len(value) > MAX_PROMPT_CHARS:
                raise bad(item, f"{where}.prompts[{i}]", f"is {len(value):,} characters; the "
                                                         f"API allows at most "
                                                         f"{MAX_PROMPT_CHARS:,}")
            if value in seen:
                raise bad(item, f"{where}.prompts[{i}]", f"is the same as prompts[{seen[value]}]")
            seen[value] = i
            prompts.append(value)
        count = _scalar(m.get("count"))
        out[job_id] = Entry(job_id, _scalar(m.get("brief")), _scalar(m.get("brief_sha256")),
                            _scalar(m.get("model")), _scalar(m.get("written")), tuple(prompts),
                            _scalar(m.get("vary")), _scalar(m.get("keep")),
                            int(count) if count.isdigit() else len(prompts),
                            tuple(_loc(item) for item in items.value))
    return out


def render_lock(manifest: str, entries: Sequence[Entry]) -> str:
    """The lock file's text: a header saying what it is, then one entry per job, one prompt
    a list item (a long line each, so a diff shows a changed prompt as one line)."""
    head = (f"# Prompts written from the briefs of {manifest} by `imagebatch expand`.\n"
            "# Commit this file: `plan` and `run` read only it. A prompt may be edited by "
            "hand;\n# `imagebatch expand` rewrites only the briefs changed since (or those "
            "named with --again).\n")
    jobs: dict[str, Any] = {}
    for e in entries:
        entry: dict[str, Any] = {"brief": e.brief}
        if e.vary:
            entry["vary"] = e.vary
        if e.keep:
            entry["keep"] = e.keep
        entry |= {"count": len(e.prompts), "brief_sha256": e.digest, "model": e.model,
                  "written": e.written, "prompts": list(e.prompts)}
        jobs[e.job_id] = entry
    body: str = yaml.safe_dump({"version": 1, "jobs": jobs}, sort_keys=False, allow_unicode=True,
                          width=1 << 30, default_flow_style=False)
    return head + body

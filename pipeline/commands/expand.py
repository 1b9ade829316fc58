"""`imagebatch expand M`: write the prompts of a manifest's briefs into its prompts lock.

Only briefs that are stale (no entry, or an entry written from another brief) or named with
`--again` are sent; every other entry, hand edits included, is kept as it is. The answers are
all checked before the lock is written, so a refused answer writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import aiohttp

from ..errors import ConfigError, UsageError
from ..planning import config, promptlock
from ..planning.manifest import load_briefs
from ..running.chat import DEFAULT_CHAT_MODEL, DEFAULT_PREFIX, ChatClient, ChatSettings
from ..running.retry import Sleep
from ..service.server import ServerOptions, running_server


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(manifest: str, *, again: Sequence[str] = (), env_prefix: str = DEFAULT_PREFIX,
           env: Mapping[str, str] | None = None, out: TextIO | None = None,
           err: TextIO | None = None, sleep: Sleep = asyncio.sleep,
           now: Callable[[], str] = _now) -> int:
    """Write the stale briefs' prompts into the lock beside `manifest`; 0 when done."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    config.check_prefix(env_prefix)
    briefs = load_briefs(manifest)
    lock_path = Path(manifest).parent / promptlock.lock_name(manifest)
    old: dict[str, promptlock.Entry] = {}
    if lock_path.exists():
        old = promptlock.parse_lock(lock_path.read_bytes(), str(lock_path))
    ids = {b.job_id for b in briefs}
    unknown = [j for j in again if j not in ids]
    if unknown:
        raise UsageError(f"--again {unknown[0]!r}: no job of {manifest} has a brief "
                         f"(briefs: {', '.join(sorted(ids)) or 'none'})")
    stale = [b for b in briefs if b.job_id in again or b.job_id not in old
             or old[b.job_id].digest != b.digest or len(old[b.job_id].prompts) != b.count]
    if not stale:
        print(f"{lock_path}: all {len(briefs)} briefs are up to date; nothing was sent",
              file=out)
        if old.keys() - ids:  # a job removed from the manifest: its entry goes
            _write(lock_path, manifest, [old[b.job_id] for b in briefs])
        return 0
    written = asyncio.run(_ask(stale, env, env_prefix, err, sleep))
    stamp = now()
    entries: list[promptlock.Entry] = []
    for b in briefs:
        if b.job_id in written:
            model, prompts = written[b.job_id]
            entries.append(promptlock.Entry(b.job_id, b.brief, b.digest, model, stamp,
                                            tuple(prompts), b.vary, b.keep, b.count))
        else:
            entries.append(old[b.job_id])
    _write(lock_path, manifest, entries)
    for b in stale:
        print(f"{b.job_id}: {len(written[b.job_id][1])} new prompts", file=out)
        for i, prompt in enumerate(written[b.job_id][1], 1):
            print(f"  p{i}: {prompt}", file=out)
    print(f"wrote {lock_path}: review the prompts and commit it", file=out)
    return 0


def _write(path: Path, manifest: str, entries: list[promptlock.Entry]) -> None:
    """The lock, written whole or not at all (a temp file renamed over it)."""
    text = promptlock.render_lock(manifest, entries)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.asynccontextmanager
async def _settings(env: Mapping[str, str], prefix: str,
                    err: TextIO) -> AsyncIterator[ChatSettings]:
    """The chat service of `{prefix}_URL` and `_KEY`, or the embedded server when no URL
    is set (as `run` does for images)."""
    url = (env.get(f"{prefix}_URL") or "").strip()
    key = (env.get(f"{prefix}_KEY") or "").strip() or None
    model = (env.get(f"{prefix}_MODEL_ID") or "").strip() or DEFAULT_CHAT_MODEL
    if url:
        if key is None:
            raise ConfigError(f"{prefix}_URL is set but {prefix}_KEY is not: set it with: "
                              f"export {prefix}_KEY=$(heroku config:get -a APP {prefix}_KEY)")
        base = config.base_url(
            url, prefix, f"export {prefix}_URL=$(heroku config:get -a APP {prefix}_URL)",
            ("/v1/chat/completions", "/v1"))
        yield ChatSettings(base, key, model, key_variable=f"{prefix}_KEY")
        return
    async with running_server(ServerOptions(workers=1), host="127.0.0.1", port=0) as srv:
        print(f"{prefix}_URL is not set: using the embedded local server at {srv.url}",
              file=err, flush=True)
        yield ChatSettings(srv.url, key, model, key_variable=f"{prefix}_KEY")


async def _ask(briefs: list[promptlock.Brief], env: Mapping[str, str], prefix: str,
               err: TextIO, sleep: Sleep) -> dict[str, tuple[str, list[str]]]:
    """job id -> (model, prompts) for each brief, asked one after another."""
    answers: dict[str, tuple[str, list[str]]] = {}
    async with _settings(env, prefix, err) as settings, aiohttp.ClientSession() as session:
        client = ChatClient(session, settings, sleep=sleep)
        for brief in briefs:
            print(f"asking {settings.model} for {brief.count} prompts for {brief.job_id!r}",
                  file=err, flush=True)
            answers[brief.job_id] = (settings.model, await client.write(brief))
    return answers


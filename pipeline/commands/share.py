"""`pull` and `push`: move a plan's images between the outputs folder and the shared cache.

Both send nothing to the image API. `pull` restores every image of the plan that the cache
has and this folder lacks (each verified as a run verifies it), then rebuilds thumbnails,
sheets and the index; `push` uploads what is done here and missing from the cache. Both
are incremental: what is already on the other side is not moved again.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..pictures.post import build_all, stop_on_signals
from ..planning import config
from ..planning.manifest import DEFAULT_MAX_JOBS
from ..planning.plan import Job, Plan
from ..running import cache as cached
from ..running.options import DEFAULT_OUT
from ..storage import picks
from ..storage.cache import Cache
from ..storage.context import CacheUse, Context, resolve
from ..storage.store import DONE, Record, Store


@dataclass(frozen=True, slots=True)
class Share:
    """What `pull` or `push` is asked about: one plan, its folder, the cache."""

    manifest: str
    out_dir: Path = DEFAULT_OUT
    cache: str | None = None  # the URL; None: $IMAGEBATCH_CACHE
    env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,)
    local: bool = False
    shard: tuple[int, int] | None = None
    max_jobs: int = DEFAULT_MAX_JOBS
    post: bool = True
    picks_file: str | Path | None = None


def _open(share: Share, env: Mapping[str, str]) -> tuple[Context, Plan, Store, Cache]:
    """The command's context, its plan, its store (judged as `run` judges it: every key of a
    mixed pool's jobs, every member's images) and the checked cache."""
    ctx = resolve([share.manifest], env=env, env_prefixes=share.env_prefixes,
                  local=share.local, out_dir=share.out_dir, max_jobs=share.max_jobs,
                  shard=share.shard, cache=share.cache, use_cache=CacheUse.REQUIRED)
    assert ctx.cache is not None
    return ctx, ctx.plan, ctx.store(ctx.plan), ctx.cache


def pull_command(share: Share, env: Mapping[str, str] | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`imagebatch pull`: restore what the cache has of the plan, then post-process."""
    env = os.environ if env is None else env
    out, err = out or sys.stdout, err or sys.stderr
    ctx, plan, store, cache = _open(share, env)
    # pull sends nothing: a job the cache cannot fill is left for a run to make
    transfers = cached.Transfers(cache, err, instead="stays missing here")

    async def pull() -> tuple[list[Job], int, set[str]]:
        await asyncio.to_thread(store.prepare)
        try:
            await asyncio.to_thread(store.load)
            await cached.load_index(transfers, [store])
            states = await asyncio.to_thread(store.check, plan.jobs)
            todo = [st.job for st in states if st.state != DONE]
            listed = sum(1 for j in todo if any(k in transfers.index for k in j.keys))
            restored = await cached.restore(transfers, store, todo)
        finally:
            store.close()
        return todo, listed, restored

    todo, listed, restored = asyncio.run(pull())
    tally = transfers.tally(store)
    unfilled = listed - len(restored)
    bad = (f", {unfilled} with no good object in it" if unfilled else "") + (
        f", {tally.rejected} bad object(s) skipped ({tally.removed} removed from the cache)"
        if tally.rejected else "")
    print(f"{plan.name}: pulled {tally.restored} image(s) from {cache.url}, "
          f"{len(plan.jobs) - len(todo)} already here, {len(todo) - listed} not in the "
          f"cache{bad} ({store.root})", file=out)
    if todo and not listed:  # none for this backend: perhaps the cache has another's
        prefix = ctx.prefixes[0]
        for line in cached.elsewhere(cache, todo, store.backends, prefix):
            print(f"note: {line}", file=err)
    if share.post:
        with stop_on_signals() as stop:
            build_all(plan, store.root, backend=ctx.judged, stop=stop,
                      picks_file=picks.picks_path(plan.source, share.picks_file))
    return 0


def push_command(share: Share, env: Mapping[str, str] | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`imagebatch push`: upload what is done here and missing from the cache; exit 1 when
    an upload failed."""
    env = os.environ if env is None else env
    out, err = out or sys.stdout, err or sys.stderr
    _ctx, plan, store, cache = _open(share, env)
    transfers = cached.Transfers(cache, err)

    async def push() -> tuple[int, int, int, int]:
        await asyncio.to_thread(store.prepare)
        try:
            await asyncio.to_thread(store.load)
            await cached.load_index(transfers, [store])
            done = sum(1 for st in await asyncio.to_thread(store.check, plan.jobs)
                       if st.state == DONE)
            todo = await asyncio.to_thread(cached.missing, transfers, store, plan.jobs)
            gate = asyncio.Semaphore(cached.TRANSFERS)

            async def one(job: Job, rec: Record) -> cached.Uploaded:
                async with gate:
                    return await cached.upload(transfers, store, job, rec)

            results = await asyncio.gather(*(one(job, rec) for job, rec in todo))
        finally:
            store.close()
        uploaded = sum(1 for r in results if r == "uploaded")
        failed = sum(1 for r in results if r == "failed")
        return uploaded, done - uploaded - failed, len(plan.jobs) - done, failed

    uploaded, there, not_done, failed = asyncio.run(push())
    lost = f", {failed} failed to upload" if failed else ""
    print(f"{plan.name}: pushed {uploaded} image(s) to {cache.url}, {there} already there, "
          f"{not_done} not done here{lost}", file=out)
    return 1 if failed else 0

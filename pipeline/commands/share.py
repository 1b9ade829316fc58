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

from pipeline.errors import UsageError
from pipeline.pictures.post import build_all, stop_on_signals
from pipeline.planning import config
from pipeline.planning.manifest import DEFAULT_MAX_JOBS, load_plans
from pipeline.planning.plan import Job, Plan
from pipeline.running import cache as cached
from pipeline.running.options import DEFAULT_OUT
from pipeline.storage import picks
from pipeline.storage.cache import CACHE_VARIABLE, Cache, check_cache
from pipeline.storage.store import DONE, Record, Store


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


def _open(share: Share, env: Mapping[str, str]) -> tuple[Plan, Store, Cache]:
    """The plan, its store (judged as `status` judges it) and the checked cache."""
    prefix = config.split_prefixes(share.env_prefixes)[0][0]
    (plan,) = load_plans([share.manifest], env, prefix, max_jobs=share.max_jobs,
                         shard=share.shard)
    backend, judged = config.judged_backends(env, share.env_prefixes, share.local)
    cache = check_cache(share.cache, env)
    if cache is None:
        raise UsageError(f"no cache: give --cache URL or set {CACHE_VARIABLE}")
    # A pool's members all count; which prefix made an image does not matter here.
    members = {name: name for name in judged} if len(judged) > 1 else None
    return plan, Store(share.out_dir, plan.name, backend, members=members), cache


def pull_command(share: Share, env: Mapping[str, str] | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`imagebatch pull`: restore what the cache has of the plan, then post-process."""
    env = os.environ if env is None else env
    out, err = out or sys.stdout, err or sys.stderr
    plan, store, cache = _open(share, env)
    transfers = cached.Transfers(cache, err)

    async def pull() -> tuple[int, int]:
        await asyncio.to_thread(store.prepare)
        try:
            await asyncio.to_thread(store.load)
            await cached.load_index(transfers, [store])
            states = await asyncio.to_thread(store.check, plan.jobs)
            todo = [st.job for st in states if st.state != DONE]
            restored = await cached.restore(transfers, store, todo)
        finally:
            store.close()
        return len(plan.jobs) - len(todo), len(todo) - len(restored)

    here, absent = asyncio.run(pull())
    tally = transfers.tally(store)
    bad = f", {tally.rejected} bad object(s) removed" if tally.rejected else ""
    print(f"{plan.name}: pulled {tally.restored} image(s) from {cache.url}, {here} already "
          f"here, {absent} not in the cache{bad} ({store.root})", file=out)
    if share.post:
        _backend, judged = config.judged_backends(env, share.env_prefixes, share.local)
        with stop_on_signals() as stop:
            build_all(plan, store.root, backend=judged, stop=stop,
                      picks_file=picks.picks_path(plan.source, share.picks_file))
    return 0


def push_command(share: Share, env: Mapping[str, str] | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`imagebatch push`: upload what is done here and missing from the cache; exit 1 when
    an upload failed."""
    env = os.environ if env is None else env
    out, err = out or sys.stdout, err or sys.stderr
    plan, store, cache = _open(share, env)
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

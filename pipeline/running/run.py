"""`imagebatch run`, less its output: plans in, a RunReport out.

Read top to bottom: load the plans, pick the backend (the URL, or the embedded server
started here, or a pool of several URLs and keys), skip what is done, wire the session and
a pacer and client per backend into the runner, let signals stop it, write each plan's
summary.json, post-process, and return the typed report. The command line prints the
report and turns it into an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import aiohttp

from .. import version
from ..errors import Interrupted, StoreError
from ..pictures.post import Stop, build_all
from ..planning import config
from ..planning.plan import Job, Plan
from ..planning.select import ALL, narrow, narrow_all
from ..providers import connect, default
from ..providers.base import Provider
from ..service.server import ServerOptions, flat_placeholders, running_server
from ..signals import on_stop_signals
from ..storage import credentials, picks
from ..storage.cache import Cache, claim_lease
from ..storage.context import CacheUse, resolve
from ..storage.store import DONE, Record, Store
from . import cache as cached
from .claims import Claims
from .client import ApiClient
from .options import REMOTE_DEFAULT_RPM, RunOptions
from .progress import Progress
from .retry import Pacer
from .runner import Member, Runner, StoreTally
from .summary import (
    Failure,
    MemberReport,
    PlanReport,
    RunReport,
    markdown,
    plan_doc,
)


def run(opts: RunOptions, env: Mapping[str, str] | None = None,
        err: TextIO | None = None) -> RunReport:
    """Validate every manifest, run what is not done, post-process; the report.

    Nothing is sent before every manifest and the configuration have passed their checks.
    With $GITHUB_STEP_SUMMARY set, the report is appended there as Markdown too.
    """
    env = os.environ if env is None else env
    err = err or sys.stderr
    opts.spending(env)  # a price or budget that is not one: exit 2 before anything is read
    # With a selection the whole plans are loaded: it is made, and its patterns checked, on
    # them (run_plans applies the shard after it).
    ctx = resolve(opts.manifests, env=env, env_prefixes=opts.env_prefixes, local=opts.local,
                  out_dir=opts.out, max_jobs=opts.max_jobs,
                  shard=None if opts.selection.active else opts.shard, cache=opts.cache,
                  use_cache=CacheUse.ON)
    plans = list(ctx.plans)
    narrow_all(plans, opts.selection, opts.shard)  # a pattern matching nothing: exit 2
    for plan in plans:  # the sheets mark the picks: a broken picks file stops us here
        picks.load_picks(picks.picks_path(plan.source),
                         plan if plan.shard is None else None)
    conns, more = connect.pool(env, ctx.prefixes, local=opts.local)
    claim_lease(env)  # a lease that is not a number of seconds: exit 2 before anything
    cache = ctx.cache
    for note in (*ctx.notes, *more):
        print(f"note: {note}", file=err)
    report = asyncio.run(run_plans(plans, conns, opts, err, env=env, cache=cache))
    write_step_summary(report, env)
    return report


@dataclass(frozen=True, slots=True)
class _Backend:
    prefix: str  # the environment prefix naming its variables
    url: str
    key: str = field(repr=False)
    name: str  # what results.jsonl records
    provider: Provider = field(default_factory=default)  # the request shape its URL speaks


def _backends(conns: Sequence[connect.Connection]) -> list[_Backend]:
    """The remote service(s), or the embedded server (its URL set once `_serve` starts it)."""
    if not conns[0].local:
        return [_Backend(c.prefix, c.url, c.key, config.backend_name(c.url), c.provider)
                for c in conns if c.url is not None and c.key is not None]
    return [_Backend(conns[0].prefix, "", "local", config.LOCAL_BACKEND, conns[0].provider)]


@contextlib.asynccontextmanager
async def _serve(backend: _Backend, err: TextIO, reason: str, flat: bool
                 ) -> AsyncIterator[_Backend]:
    """The embedded server started here for the rest of the run: `backend` at its URL."""
    async with running_server(ServerOptions(flat=flat), host="127.0.0.1", port=0) as srv:
        print(f"{reason}: using the embedded local server at {srv.url}", file=err, flush=True)
        yield replace(backend, url=srv.url)


async def run_plans(
    plans: Sequence[Plan], conn: connect.Connection | Sequence[connect.Connection],
    opts: RunOptions, err: TextIO, reason: str = "", *, env: Mapping[str, str] | None = None,
    cache: Cache | None = None,
) -> RunReport:
    """Run validated plans against `conn` (the embedded server for a local one), or against
    a pool of connections; write each summary.json, post-process unless stopped or told
    not to; the report.

    With a selection (`opts.selection`), `plans` are the whole plans: the jobs run are the
    selected ones of shard `opts.shard`, and post-processing shows that shard's every job.
    The price and budget are `opts.spending(env)` (env: the process's by default). With a
    (checked) `cache`, jobs are restored from it first (no request, so nothing spent of the
    budget) and what is made is uploaded to it; each job is claimed there before it is
    sent (not with --force), so that runs at once on one cache pay for each image once.
    """
    price, budget = opts.spending(os.environ if env is None else env)
    # signing asked for (IMAGEBATCH_C2PA_*) but impossible stops here, before any request
    signer = credentials.signer_from_env(os.environ if env is None else env)
    flat = flat_placeholders(os.environ if env is None else env)  # a typo stops here too
    chosen = list(plans)
    if opts.selection.active:
        chosen = narrow_all(plans, opts.selection, opts.shard)
        plans = [narrow(p, ALL, opts.shard) for p in plans]
    conns = [conn] if isinstance(conn, connect.Connection) else list(conn)
    reason = reason or ("--local given" if opts.local else f"no {conns[0].prefix}_URL set")
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as server:
        backends = _backends(conns)
        pooled = len(backends) > 1
        name = ",".join(sorted({b.name for b in backends}))
        members = {b.prefix: b.name for b in backends} if pooled else None
        stores = [Store(opts.out, plan.name, name, members=members, signer=signer)
                  for plan in plans]
        transfers = cached.Transfers(cache, err) if cache is not None else None
        try:
            claims = None
            if transfers is not None and not opts.force:
                claims = await _claims(transfers, os.environ if env is None else env, err)
            uploader = cached.Uploader(transfers, claims) if transfers is not None else None
            try:
                work, skipped, held = await _todo(chosen, stores, opts, err, transfers,
                                                  uploader)
                if work and conns[0].local:  # nothing to send, no server: done is judged on disk
                    backends = [await server.enter_async_context(_serve(backends[0], err,
                                                                        reason, flat))]
                runner = await _run_jobs(work, backends, opts, err,
                                         {c.prefix: c.key_variable for c in conns},
                                         uploader.submit if uploader is not None else None,
                                         budget=None if budget is None else budget.requests,
                                         claims=claims)
            finally:
                if uploader is not None:
                    await uploader.close()  # write behind: every saved image, then the summary
                if claims is not None:
                    await claims.close()  # what this run did not make is free for others
            state = runner.state
        finally:
            for store in stores:
                store.close()
        seconds = time.monotonic() - started
        reports = [_plan_report(sub, store, state.by_store.get(store, StoreTally()), done,
                                seconds, state.interrupted, transfers,
                                whole=len(plan.jobs) if opts.selection.active else None,
                                held=kept)
                   for plan, sub, store, done, kept in zip(plans, chosen, stores, skipped, held,
                                                           strict=True)]
        pool = tuple(MemberReport(m.prefix, m.requests, m.images, m.throttled, m.dropped)
                     for m in runner.members) if pooled else ()
        store_error = state.store_error
        spend = RunReport(tuple(reports), members=pool, price=price, budget=budget,
                          budget_reached=state.budget_reached,
                          selection=opts.selection if opts.selection.active else None)
        for store, report in zip(stores, reports, strict=True):
            try:
                await asyncio.to_thread(store.write_summary,
                                        plan_doc(report, version(), members=pool, run=spend))
            except StoreError as exc:
                # A full or read-only disk: still report what was made, and the first
                # write that failed (an image, usually) rather than this one.
                store_error = store_error or exc
    interrupted = state.interrupted
    if opts.post and not interrupted and state.config_error is None and store_error is None:
        with _stopping_post_on_signals() as stop:
            for plan, store in zip(plans, stores, strict=True):
                try:
                    await asyncio.to_thread(build_all, plan, store.root, backend=store.backends,
                                            stop=stop, picks_file=picks.picks_path(plan.source))
                except StoreError as exc:
                    # The images are safe; report what was made, then what could not be
                    # written.
                    store_error = exc
                    break
                except Interrupted:
                    # Stopped while post-processing: the summaries say so, and the next
                    # run finishes the sheets.
                    interrupted = True
                    reports = [replace(r, interrupted=True) for r in reports]
                    spend = replace(spend, plans=tuple(reports))
                    for st, report in zip(stores, reports, strict=True):
                        with contextlib.suppress(StoreError):
                            await asyncio.to_thread(
                                st.write_summary,
                                plan_doc(report, version(), members=pool, run=spend))
                    break
    reports = [_with_post_outputs(r) for r in reports]
    return replace(spend, plans=tuple(reports), interrupted=interrupted,
                   config_error=state.config_error, store_error=store_error,
                   version=version())


async def _claims(transfers: cached.Transfers, env: Mapping[str, str],
                  err: TextIO) -> Claims | None:
    """The run's claims on the cache, renewing; None (said once) when the store cannot
    make them: it does not keep an object against a create-only put."""
    claims = Claims(transfers, claim_lease(env))
    why = await transfers.cache.conditional_puts(claims.run)
    if why is not None:
        print(f"note: cache {transfers.cache.url} cannot hold claims ({why}): runs at once "
              "on it may each pay for the same images", file=err, flush=True)
        return None
    claims.start()
    return claims


@contextlib.contextmanager
def _stopping_post_on_signals() -> Iterator[Stop]:
    """While post-processing: SIGINT / SIGTERM stop it (workers killed, Interrupted); once
    stopped, later signals are ignored so that exit 130 is not cut short."""
    stop = Stop()
    with on_stop_signals(stop.set, ignore_after=lambda: stop.requested):
        yield stop


async def _todo(
    plans: Sequence[Plan], stores: Sequence[Store], opts: RunOptions, err: TextIO,
    transfers: cached.Transfers | None = None, uploader: cached.Uploader | None = None,
) -> tuple[list[tuple[Store, Job]], list[int], list[int]]:
    """Open every store (sweeping a killed run's temp files): the jobs not done yet, how
    many of each plan's jobs are done already, and how many are held back: failed with an
    answer a retry cannot change (not with --retry-failed or --force). With a cache: what it
    has is restored first (not with --force), and what is done here but missing there is
    queued for upload (an earlier run's failed or cut-off uploads)."""
    work: list[tuple[Store, Job]] = []
    skipped: list[int] = []
    held: list[int] = []
    for plan, store in zip(plans, stores, strict=True):
        removed = await asyncio.to_thread(store.prepare)
        if removed and opts.verbose:
            print(f"{plan.name}: removed {removed} temp file(s) of an interrupted run", file=err)
        await asyncio.to_thread(store.load)
    if transfers is not None:
        await cached.load_index(transfers, stores)
    for plan, store in zip(plans, stores, strict=True):
        states = await asyncio.to_thread(store.check, plan.jobs, verify=opts.verify)
        todo = [st.job for st in states if opts.force or st.state != DONE]
        if transfers is not None and uploader is not None:
            if not opts.force:
                restored = await cached.restore(transfers, store, todo)
                todo = [j for j in todo if j.key not in restored]
            for job, rec in await asyncio.to_thread(cached.missing, transfers, store, plan.jobs):
                uploader.submit(store, job, rec)
        # The same request would get the same answer, paid for again: left alone until the
        # request changes (a new key, so a new state) or the user asks.
        final = set() if opts.force or opts.retry_failed else {
            st.job.key for st in states if st.final}
        held.append(sum(j.key in final for j in todo))
        todo = [j for j in todo if j.key not in final]
        skipped.append(len(plan.jobs) - len(todo) - held[-1] - (
            transfers.tally(store).restored if transfers is not None else 0))
        work.extend((store, j) for j in todo)
    return work, skipped, held


async def _run_jobs(work: list[tuple[Store, Job]], backends: Sequence[_Backend],
                    opts: RunOptions, err: TextIO,
                    key_variables: Mapping[str, str] | None = None,
                    on_saved: Callable[[Store, Job, Record], None] | None = None, *,
                    budget: int | None = None, claims: Claims | None = None) -> Runner:
    """The session, and a pacer and client per backend, run by one runner (stopped by
    SIGINT / SIGTERM, and sending at most `budget` image requests); the runner, done."""
    # One clock and one sleep for pacing and backoff alike.
    clock, sleep = time.monotonic, asyncio.sleep
    settings = opts.settings()
    rpm, auto = opts.rpm, False
    if rpm is None and backends[0].name != config.LOCAL_BACKEND:
        rpm, auto = REMOTE_DEFAULT_RPM, True  # per backend: a pool of N goes N times as fast
    progress = Progress(len(work), stream=err)
    key_variables = key_variables or {}

    def dropped(member: Member) -> None:
        print(f"\nwarning: pool member {member.prefix} dropped, its jobs go to the others: "
              f"{member.dropped}", file=err, flush=True)

    # --concurrency caps the requests in flight over every backend together.
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        paces = [b.provider.pace(opts.rpm, rpm, auto, b.name == config.LOCAL_BACKEND)
                 for b in backends]
        members = [
            Member(ApiClient(session, b.url, b.key, timeout=opts.timeout,
                             key_variable=key_variables.get(b.prefix, f"{b.prefix}_KEY"),
                             provider=b.provider),
                   Pacer(pace, auto_rpm=pace_auto, clock=clock, sleep=sleep,
                         pause_cap=settings.retry_after_cap),
                   prefix=b.prefix)
            for b, (pace, pace_auto) in zip(backends, paces, strict=True)]
        runner = Runner(members, settings, sleep=sleep, clock=clock, on_drop=dropped,
                        on_change=lambda st: progress.update(st.ok + st.restored, st.failed,
                                                             waiting=st.waiting),
                        budget=budget, on_saved=on_saved,  # type: ignore[arg-type]
                        claims=claims)  # type: ignore[arg-type]
        try:
            with _stopped_by_signals(runner, err):
                await runner.run(work)
        finally:
            progress.close()
    return runner


@contextlib.contextmanager
def _stopped_by_signals(runner: Runner, err: TextIO) -> Iterator[None]:
    """SIGINT / SIGTERM stop the runner (in-flight work settles); a second one aborts it."""
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print("\nstopping: no new requests; letting those in flight finish "
                  "(Ctrl-C again to abort them)", file=err, flush=True)
            runner.stop()
        else:
            runner.abort()

    # Once stopping, the work is settled and only the summary is left to write.
    with on_stop_signals(on_signal, ignore_after=lambda: signals > 0):
        yield


def _plan_report(plan: Plan, store: Store, tally: StoreTally, skipped: int, seconds: float,
                 interrupted: bool, transfers: cached.Transfers | None = None,
                 whole: int | None = None, held: int = 0) -> PlanReport:
    failures = sorted(tally.failures, key=lambda o: o.job.index)
    moved = transfers.tally(store) if transfers is not None else cached.Tally()
    return PlanReport(
        name=plan.name, manifest=plan.source, backend=store.backend,
        shard=f"{plan.shard[0]}/{plan.shard[1]}" if plan.shard else None, out=str(store.root),
        planned=len(plan.jobs), succeeded=tally.made, skipped=skipped, failed=len(failures),
        pending=len(plan.jobs) - tally.made - skipped - moved.restored - len(failures) - held,
        requests=tally.requests, seconds=round(seconds, 3), interrupted=interrupted,
        failures=tuple(Failure(o.job.key, o.job.path, o.error) for o in failures),
        sent=tally.sent, selected_of=whole,
        cache=transfers.cache.url if transfers is not None else None,
        restored=moved.restored, uploaded=moved.uploaded, upload_failed=moved.upload_failed,
        held=held, flagged=tally.flagged, already_there=moved.already_there,
    )


def _with_post_outputs(report: PlanReport) -> PlanReport:
    """`report` naming the contact sheets and index in its folder (for the step summary)."""
    root = Path(report.out)
    sheets = sorted(p.name for p in root.glob("contact-sheet*.png"))
    index = root / "index.html"
    return replace(report, sheets=tuple(str(root / name) for name in sheets),
                   index=str(index) if index.is_file() else None)


def write_step_summary(report: RunReport, env: Mapping[str, str]) -> bool:
    """Append the Markdown summary to $GITHUB_STEP_SUMMARY when it is set; True if written."""
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target or not report.plans:
        return False
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown(report))
    except OSError:
        return False  # a CI nicety; never fail a finished run over it
    return True

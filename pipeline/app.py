"""The `run`, `status` and `show` commands: load plans, pick the backend, run, post, summarise.

cli.py parses and calls one function here; the work itself lives in runner/client/store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from pipeline import config, version
from pipeline.client import ApiClient, backend_name
from pipeline.errors import ImagebatchError, ManifestError, StoreError, UsageError, printable
from pipeline.metadata import MetadataError, read_request
from pipeline.plan import Job, Plan, canonical_json
from pipeline.post import build_all
from pipeline.progress import Progress
from pipeline.retry import Pacer
from pipeline.runner import Runner, RunSettings, RunState
from pipeline.server import ServerOptions, running_server
from pipeline.store import Store

LOCAL_BACKEND = "local"
REMOTE_DEFAULT_RPM = 20.0  # the documented Stable Image Ultra limit, per model resource


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `imagebatch run` was asked to do."""

    manifests: tuple[str, ...]
    out: Path = Path("outputs")
    concurrency: int = 4
    rpm: float | None = None  # None: 20 for a remote URL (or its advertised limit); none locally
    retries: int = 5
    timeout: float = 120.0
    force: bool = False
    shard: tuple[int, int] | None = None
    max_jobs: int = 5000
    local: bool = False
    post: bool = True
    json: bool = False
    env_prefix: str = config.DEFAULT_PREFIX
    verbose: int = 0
    backoff_base: float = 1.0  # seconds; first retry waits up to this (tests shrink it)


class Interrupted(ImagebatchError):
    """Stopped by Ctrl-C or SIGTERM after settling in-flight work."""

    exit_code = 130


def load_plans(
    manifests: Sequence[str], env: Mapping[str, str], prefix: str, *,
    max_jobs: int, shard: tuple[int, int] | None,
) -> list[Plan]:
    """Load and validate every manifest before anything is sent; all errors at once."""
    from pipeline.manifest import load_plan

    model = config.default_model(env, prefix)
    plans: list[Plan] = []
    problems = []
    unreadable = []  # a missing file must not hide the problems of the others
    for path in manifests:
        try:
            plans.append(load_plan(path, max_jobs=max_jobs, default_model=model, shard=shard))
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


@contextlib.asynccontextmanager
async def _backend(
    conn: config.Connection, err: TextIO, reason: str
) -> AsyncIterator[tuple[str, str, str]]:
    """(base URL, key, backend name): the remote service, or the embedded server started here."""
    if not conn.local:
        assert conn.url is not None and conn.key is not None
        yield conn.url, conn.key, backend_name(conn.url)
        return
    async with running_server(ServerOptions(), host="127.0.0.1", port=0) as srv:
        print(f"{reason}: using the embedded local server at {srv.url}", file=err, flush=True)
        yield srv.url, "local", LOCAL_BACKEND


def _summary(plan: Plan, store: Store, state: RunState, skipped: int, seconds: float,
             requests: int) -> dict[str, Any]:
    failures = sorted(
        (o for o in state.outcomes if o.store is store), key=lambda o: o.job.index
    )
    succeeded = state.ok_by_store.get(id(store), 0)
    return {
        "version": version(),
        "name": plan.name,
        "manifest": plan.source,
        "backend": store.backend,
        "shard": f"{plan.shard[0]}/{plan.shard[1]}" if plan.shard else None,
        "out": str(store.root),
        "planned": len(plan.jobs),
        "succeeded": succeeded,
        "skipped": skipped,
        "failed": len(failures),
        "pending": len(plan.jobs) - succeeded - skipped - len(failures),
        "requests": requests,
        "seconds": round(seconds, 3),
        "interrupted": state.interrupted,
        "failures": [{"key": o.job.key, "path": o.job.path, "reason": o.error} for o in failures],
    }


def _human(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['name']}: {summary['succeeded']} made, {summary['skipped']} already done, "
        f"{summary['failed']} failed"
        + (f", {summary['pending']} not run" if summary["pending"] else "")
        + f" of {summary['planned']} in {summary['seconds']:.1f} s "
        f"({summary['requests']} requests, backend {summary['backend']})",
    ]
    for f in summary["failures"]:
        lines.append(f"  FAILED {f['path']}: {f['reason']}")
    lines.append(f"  outputs: {summary['out']}")
    return "\n".join(lines)


async def run_plans_async(
    plans: list[Plan], conn: config.Connection, opts: RunOptions, err: TextIO, reason: str = ""
) -> tuple[list[dict[str, Any]], RunState]:
    """Run validated plans against `conn` (or the embedded server); (summaries, state)."""
    reason = reason or ("--local given" if opts.local else f"no {opts.env_prefix}_URL set")
    started = time.monotonic()
    async with _backend(conn, err, reason) as (url, key, backend):
        stores = [Store(opts.out, plan.name, backend) for plan in plans]
        work: list[tuple[Store, Job]] = []
        skipped: dict[int, int] = {}
        for plan, store in zip(plans, stores):
            removed = await asyncio.to_thread(store.prepare)
            if removed and opts.verbose:
                print(f"{plan.name}: removed {removed} temp file(s) of an interrupted run", file=err)
            await asyncio.to_thread(store.load)
            todo = [j for j in plan.jobs if opts.force or not store.is_done(j)]
            skipped[id(store)] = len(plan.jobs) - len(todo)
            work.extend((store, j) for j in todo)
        rpm = opts.rpm
        auto = False
        if rpm is None and not conn.local:
            rpm, auto = REMOTE_DEFAULT_RPM, True
        progress = Progress(len(work), stream=err)
        holder: dict[str, Runner] = {}

        async def paced_sleep(seconds: float) -> None:
            await holder["runner"].sleep(seconds)

        pacer = Pacer(rpm or None, auto_rpm=auto, sleep=paced_sleep,
                      pause_cap=120.0)
        connector = aiohttp.TCPConnector(limit=opts.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = ApiClient(session, url, key, timeout=opts.timeout,
                               key_variable=conn.key_variable, observe=pacer.observe)
            runner = Runner(
                client,
                RunSettings(concurrency=opts.concurrency, rpm=rpm, auto_rpm=auto,
                            retries=opts.retries, timeout=opts.timeout,
                            backoff_base=opts.backoff_base),
                pacer=pacer,
                on_change=lambda st: progress.update(st.ok, st.failed),
            )
            holder["runner"] = runner
            loop = asyncio.get_running_loop()
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

            installed = []
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, on_signal)
                    installed.append(sig)
            try:
                state = await runner.run(work)
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)
                    if signals:
                        # Stopping already: the work is settled, only the summary is left to
                        # write. A later Ctrl-C (the second, arriving late) must not cut that
                        # short and turn exit 130 into death by SIGINT.
                        signal.signal(sig, signal.SIG_IGN)
                progress.close()
                for store in stores:
                    store.close()
        elapsed = time.monotonic() - started
        summaries = []
        for plan, store in zip(plans, stores):
            summary = _summary(plan, store, state, skipped[id(store)], elapsed,
                               state.requests_by_store.get(id(store), 0))
            try:
                await asyncio.to_thread(store.write_summary, summary)
            except StoreError as exc:
                # A full or read-only disk: still print what was made, and report the
                # first write that failed (an image, usually) rather than this one.
                if state.store_error is None:
                    state.store_error = exc
            summaries.append(summary)
    if (opts.post and not state.interrupted and state.config_error is None
            and state.store_error is None):
        for plan, store in zip(plans, stores):
            try:
                await asyncio.to_thread(build_all, plan, store.root)
            except StoreError as exc:
                # The images are safe; print the summary, then say what could not be written.
                state.store_error = exc
                break
    return summaries, state


def run_command(
    opts: RunOptions,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`imagebatch run`: validate everything, run what is not done, summarise; the exit code."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    config.check_prefix(opts.env_prefix)
    plans = load_plans(opts.manifests, env, opts.env_prefix, max_jobs=opts.max_jobs,
                       shard=opts.shard)
    conn = config.connection(env, opts.env_prefix, local=opts.local)
    summaries, state = asyncio.run(run_plans_async(plans, conn, opts, err))
    from pipeline.ghsummary import write_step_summary

    write_step_summary(summaries, env)
    return report(summaries, state, opts, out, err)


def sheet_command(
    manifest: str, *, out_dir: Path = Path("outputs"), env_prefix: str = config.DEFAULT_PREFIX,
    max_jobs: int = 5000, env: Mapping[str, str] | None = None, out: TextIO | None = None,
) -> int:
    """`imagebatch sheet`: rebuild thumbnails, contact sheets and index.html from disk."""

    env = os.environ if env is None else env
    out = out or sys.stdout
    config.check_prefix(env_prefix)
    (plan,) = load_plans([manifest], env, env_prefix, max_jobs=max_jobs, shard=None)
    root = Path(out_dir) / plan.name
    if not root.is_dir():
        raise UsageError(f"{root}: nothing to post-process yet; run `imagebatch run {manifest}`")
    result = build_all(plan, root)
    sheets = ", ".join(str(p) for p in result.sheets) or "none"
    print(f"{plan.name}: {result.thumbs_made} thumbnails made, {result.thumbs_kept} kept, "
          f"{result.missing} jobs without an image; sheets: {sheets}; index: {result.index}",
          file=out)
    return 0


def report(
    summaries: list[dict[str, Any]], state: RunState, opts: RunOptions, out: TextIO, err: TextIO
) -> int:
    """Print the summaries (JSON on stdout with --json) and return the exit code."""
    text = "\n".join(_human(s) for s in summaries)
    if opts.json:
        doc: Any = summaries[0] if len(summaries) == 1 else summaries
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
        print(text, file=err)
    else:
        print(text, file=out)
    if state.store_error is not None:
        raise state.store_error
    if state.config_error is not None:
        print(f"imagebatch: {state.config_error.message}", file=err)
        return 2
    if state.interrupted:
        print("imagebatch: interrupted; run the same command again to finish", file=err)
        return 130
    return 1 if any(s["failed"] for s in summaries) else 0


def _status_backend(env: Mapping[str, str], prefix: str, local: bool) -> str:
    config.check_prefix(prefix)
    url = (env.get(f"{prefix}_URL") or "").strip()
    # The same checks and the same base URL as `run`, so both name the backend alike.
    return LOCAL_BACKEND if local or not url else backend_name(config.base_url(url, prefix))


def status_command(
    manifest: str, *, out_dir: Path = Path("outputs"), local: bool = False,
    env_prefix: str = config.DEFAULT_PREFIX, verbose: int = 0, as_json: bool = False,
    shard: tuple[int, int] | None = None, max_jobs: int = 5000,
    env: Mapping[str, str] | None = None, out: TextIO | None = None,
) -> int:
    """`imagebatch status`: done / failed / pending against the backend `run` would use."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    backend = _status_backend(env, env_prefix, local)
    (plan,) = load_plans([manifest], env, env_prefix, max_jobs=max_jobs, shard=shard)
    store = Store(out_dir, plan.name, backend)
    store.load()
    counts = {"done": 0, "failed": 0, "pending": 0}
    rows: list[dict[str, str | None]] = []
    for job in plan.jobs:
        state, rec = store.state(job)
        counts[state] += 1
        rows.append({"key": job.key, "path": job.path, "state": state,
                     "error": rec.error if rec is not None and state == "failed" else None})
    if as_json:
        doc: dict[str, Any] = {"name": plan.name, "backend": backend, "planned": len(plan.jobs),
                               **counts}
        if verbose:
            doc["jobs"] = rows
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
        return 0
    print(f"{plan.name}: {len(plan.jobs)} jobs: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['pending']} pending (backend {backend}, {store.root})", file=out)
    if verbose:
        for row in rows:
            reason = f"  {printable(str(row['error']))}" if row["error"] else ""
            print(f"  {row['state']:<7} {str(row['key'])[:12]}  {printable(str(row['path']))}"
                  f"{reason}", file=out)
    return 0


def show_command(image: str, out: TextIO | None = None) -> int:
    """`imagebatch show`: the request embedded in an image, as the JSON body to send again."""
    out = out or sys.stdout
    if os.path.isdir(image):
        raise UsageError(f"{image}: a folder; give one image file")
    if not os.path.isfile(image):
        raise UsageError(f"{image}: no such file")
    try:
        body = read_request(Path(image))
    except (MetadataError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(canonical_json(body), file=out)
    return 0


__all__ = [
    "Interrupted",
    "RunOptions",
    "StoreError",
    "load_plans",
    "run_command",
    "sheet_command",
    "show_command",
    "status_command",
]

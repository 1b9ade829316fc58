"""The `run`, `status` and `show` commands: load plans, pick the backend, run, post, summarise.

cli.py parses and calls one function here; the work itself lives in runner/client/store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from pipeline import config, picks, version
from pipeline.client import ApiClient, backend_name
from pipeline.errors import (
    Interrupted,
    ManifestError,
    StoreError,
    UsageError,
    printable,
)
from pipeline.metadata import MetadataError, read_request
from pipeline.plan import Job, Plan, canonical_json
from pipeline.post import Stop, build_all, stop_on_signals
from pipeline.progress import Progress
from pipeline.retry import Pacer
from pipeline.runner import Runner, RunSettings, RunState
from pipeline.server import ServerOptions, running_server
from pipeline.store import DONE, Store, job_states

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
    verify: bool = False  # hash every image in the done check, not only changed-looking ones
    shard: tuple[int, int] | None = None
    max_jobs: int = 5000
    local: bool = False
    post: bool = True
    json: bool = False
    env_prefix: str = config.DEFAULT_PREFIX
    verbose: int = 0
    backoff_base: float = 1.0  # seconds; first retry waits up to this (tests shrink it)


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
    post_stop = Stop()  # set by a signal once the requests are over
    installed: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    async with _backend(conn, err, reason) as (url, key, backend):
        stores = [Store(opts.out, plan.name, backend) for plan in plans]
        work: list[tuple[Store, Job]] = []
        skipped: dict[int, int] = {}
        for plan, store in zip(plans, stores):
            removed = await asyncio.to_thread(store.prepare)
            if removed and opts.verbose:
                print(f"{plan.name}: removed {removed} temp file(s) of an interrupted run", file=err)
            await asyncio.to_thread(store.load)
            states = await asyncio.to_thread(store.check, plan.jobs, verify=opts.verify)
            todo = [st.job for st in states if opts.force or st.state != DONE]
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
                    else:
                        # From here a signal stops post-processing (workers killed, exit 130).
                        loop.add_signal_handler(sig, post_stop.set)
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
    try:
        if (opts.post and not state.interrupted and state.config_error is None
                and state.store_error is None):
            for plan, store in zip(plans, stores):
                try:
                    await asyncio.to_thread(build_all, plan, store.root,
                                            backend=store.backend, stop=post_stop,
                                            picks_file=picks.picks_path(plan.source))
                except StoreError as exc:
                    # The images are safe; print the summary, then say what could not be
                    # written.
                    state.store_error = exc
                    break
                except Interrupted:
                    state.interrupted = True
                    await _mark_interrupted(summaries, stores)
                    break
    finally:
        for sig in installed:
            # Once stopped, later signals stay ignored: exit 130 is not cut short.
            if loop.remove_signal_handler(sig) and post_stop.requested:
                signal.signal(sig, signal.SIG_IGN)
    return summaries, state


async def _mark_interrupted(summaries: list[dict[str, Any]], stores: list[Store]) -> None:
    """Post-processing was stopped: the summaries (printed and on disk) say interrupted."""
    for summary, store in zip(summaries, stores):
        summary["interrupted"] = True
        with contextlib.suppress(StoreError):  # the summary as written before still stands
            await asyncio.to_thread(store.write_summary, summary)


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
    for plan in plans:  # the sheets mark the picks: a broken picks file stops us here
        picks.load_picks(picks.picks_path(plan.source), plan if plan.shard is None else None)
    conn = config.connection(env, opts.env_prefix, local=opts.local)
    summaries, state = asyncio.run(run_plans_async(plans, conn, opts, err))
    from pipeline.ghsummary import write_step_summary

    write_step_summary(summaries, env)
    return report(summaries, state, opts, out, err)


def sheet_command(
    manifest: str, *, out_dir: Path = Path("outputs"), env_prefix: str = config.DEFAULT_PREFIX,
    max_jobs: int = 5000, local: bool = False, env: Mapping[str, str] | None = None,
    out: TextIO | None = None, picks_file: str | Path | None = None,
) -> int:
    """`imagebatch sheet`: rebuild thumbnails, contact sheets and index.html from disk, showing
    as done what `status` (same options, same environment) counts done."""

    env = os.environ if env is None else env
    out = out or sys.stdout
    backend = _status_backend(env, env_prefix, local)
    (plan,) = load_plans([manifest], env, env_prefix, max_jobs=max_jobs, shard=None)
    root = Path(out_dir) / plan.name
    if not root.is_dir():
        raise UsageError(f"{root}: nothing to post-process yet; run `imagebatch run {manifest}`")
    with stop_on_signals() as stop:  # Ctrl-C or SIGTERM: Interrupted, exit 130
        result = build_all(plan, root, backend=backend, stop=stop,
                           picks_file=picks.picks_path(manifest, picks_file))
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
    shard: tuple[int, int] | None = None, max_jobs: int = 5000, verify: bool = False,
    env: Mapping[str, str] | None = None, out: TextIO | None = None,
    picks_file: str | Path | None = None,
) -> int:
    """`imagebatch status`: done / failed / pending against the backend `run` would use, and
    the picks file's counts when there is one."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    backend = _status_backend(env, env_prefix, local)
    (plan,) = load_plans([manifest], env, env_prefix, max_jobs=max_jobs, shard=shard)
    root = Path(out_dir) / plan.name
    picks_at = picks.picks_path(manifest, picks_file)
    pick_counts = None
    if picks_at.exists():
        # decisions belong to the whole plan, whatever shard is asked about
        whole = plan if shard is None else load_plans([manifest], env, env_prefix,
                                                      max_jobs=max_jobs, shard=None)[0]
        pick_counts = picks.counts(picks.load_picks(picks_at, whole), whole)
    counts = {"done": 0, "failed": 0, "pending": 0}
    rows: list[dict[str, str | None]] = []
    for st in job_states(plan.jobs, root, backend, verify=verify):
        counts[st.state] += 1
        rows.append({"key": st.job.key, "path": st.job.path, "state": st.state,
                     "error": st.reason})
    if as_json:
        doc: dict[str, Any] = {"name": plan.name, "backend": backend, "planned": len(plan.jobs),
                               **counts,
                               "picks": pick_counts.as_dict() if pick_counts is not None else None}
        if verbose:
            doc["jobs"] = rows
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
        return 0
    print(f"{plan.name}: {len(plan.jobs)} jobs: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['pending']} pending (backend {backend}, {root})", file=out)
    if pick_counts is not None:
        print(f"picks: {pick_counts} ({picks_at})", file=out)
    if verbose:
        for row in rows:
            reason = f"  {printable(str(row['error']))}" if row["error"] else ""
            print(f"  {row['state']:<7} {str(row['key'])[:12]}  {printable(str(row['path']))}"
                  f"{reason}", file=out)
    return 0


#: What a path that is not a regular file is, by its stat mode's type bits.
_FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _not_a_file(path: str) -> str | None:
    """Why `path` cannot be read as one image file, or None when it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path is not a folder)"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder; give one image file"
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind}); give one image file"


def show_command(image: str, out: TextIO | None = None) -> int:
    """`imagebatch show`: the request embedded in an image, as the JSON body to send again."""
    out = out or sys.stdout
    kind = _not_a_file(image)
    if kind:
        raise UsageError(f"{image}: {kind}")
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

"""The embedded API server, offline, on aiohttp: the app that puts three fakes on one port.

api.md's `POST /v1/images/generations` (imagebatch.service.heroku), Stability AI's
`POST /v2beta/stable-image/generate/ultra` (imagebatch.service.stability) and Amazon
Bedrock's `POST /model/{modelId}/invoke` (imagebatch.service.bedrock). Each fake only reads
its requests and shapes its answers; whether a request fails, and how, is decided by the one
fault pipeline they share (imagebatch.service.faults): keys, sliding-window rate limits with
OpenAI-style headers, Stability's lockout, added latency, and injected faults (429, 5xx,
dropped connections, bodies that lie) chosen deterministically from a seed, so a run against
it is reproducible. Pictures are rendered in a process pool (imagebatch.service.render).
`imagebatch run` starts it when no URL is configured; `imagebatch serve` runs it in the
foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import UsageError
from ..planning import apispec
from . import bedrock, chat
from .bedrock import Bedrock
from .faults import (
    FAULT_KINDS,
    PLACEHOLDERS_VARIABLE,
    ServerOptions,
    ServerStats,
    Service,
    SlidingWindow,
    flat_placeholders,
)
from .heroku import FILES_PREFIX, MAX_REQUEST_BYTES, Heroku, error_response, validate
from .stability import Stability

LISTEN_BACKLOG = 1024

STATS_KEY = web.AppKey("imagebatch_server_stats", ServerStats)
SERVICE_KEY = web.AppKey("imagebatch_server_service", Service)
_HEROKU_KEY = web.AppKey("imagebatch_server_heroku", Heroku)


@dataclass(frozen=True)
class RunningServer:
    """A started server: its base URL (no trailing slash), port and live stats."""

    url: str
    port: int
    stats: ServerStats
    app: web.Application


def _mp_context() -> Any:
    """forkserver where there is one: forking a threaded server process is unsafe."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # Workers start with Pillow and the renderer imported, not the caller's __main__.
        ctx.set_forkserver_preload(["imagebatch.service.render"])
        return ctx
    return multiprocessing.get_context("spawn")


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Latency, JSON bodies for every error, counters, and the rate-limit headers."""
    service = request.app[SERVICE_KEY]
    stats = service.stats
    post = request.method == "POST"
    if post:
        stats.requests += 1
        if service.options.keep_bodies:
            stats.headers.append({name: value for name, value in request.headers.items()
                                  if name.lower() != "authorization"})
    if service.options.latency_ms:
        await service.sleep(service.options.latency_ms / 1000.0)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = None
        if exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            message = f"No route {request.method} {request.path}; images are made by " \
                      f"POST {apispec.ENDPOINT} (or {apispec.STABILITY_ENDPOINT}, or " \
                      f"{bedrock.ROUTE})"
        response = error_response(exc.status, message, headers=headers)
    transport = request.transport
    if transport is None or transport.is_closing():
        return response  # a dropped connection answers nothing; faults["reset"] counts it
    if post:
        stats.by_status[response.status] += 1
    if request.path == apispec.ENDPOINT:
        for name, value in request.app[_HEROKU_KEY].rate_headers().items():
            response.headers.setdefault(name, value)
    return response


def make_app(options: ServerOptions) -> web.Application:
    """The aiohttp application; its stats are at app[STATS_KEY], its pool starts with it."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[_middleware])
    stats = ServerStats()
    service = Service(options, stats)
    heroku = Heroku(service)
    app[STATS_KEY] = stats
    app[SERVICE_KEY] = service
    app[_HEROKU_KEY] = heroku
    app.router.add_post(apispec.ENDPOINT, heroku.generations)
    app.router.add_get(FILES_PREFIX + "{name}", heroku.file)
    app.router.add_post(apispec.STABILITY_ENDPOINT, Stability(service).generate)
    app.router.add_post(bedrock.ROUTE, Bedrock(service).invoke)
    app.router.add_post(chat.ENDPOINT, chat.completions)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        # Made here, inside the running loop, and gone with the app. Flat pictures are drawn
        # in threads: without landscapes to draw, no pool (and no process it would start).
        if not options.flat:
            workers = options.workers or os.cpu_count() or 1
            service.pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
        yield
        executor, service.pool = service.pool, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    app.cleanup_ctx.append(pool)
    return app


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


@contextlib.asynccontextmanager
async def running_server(
    options: ServerOptions, host: str = "127.0.0.1", port: int = 0, *,
    shutdown_timeout: float = 2.0,
) -> AsyncIterator[RunningServer]:
    """Serve `options` on host:port (0: a free port) for the duration of the block."""
    app = make_app(options)
    # Cancel handlers whose client hung up (a stalled request must not outlive its caller).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        # A burst of hundreds of new connections overflows the default backlog of 128 and
        # the kernel drops the rest, which clients only retry after a second.
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        yield RunningServer(url=_url(host, bound), port=bound, stats=app[STATS_KEY], app=app)
    finally:
        await runner.cleanup()


async def _serve(options: ServerOptions, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with running_server(options, host, port, shutdown_timeout=5.0) as srv:
            print(f"serving on {srv.url}", file=sys.stderr, flush=True)
            print(_describe(options), file=sys.stderr, flush=True)
            await stop.wait()
            print("stopping", file=sys.stderr, flush=True)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _describe(options: ServerOptions) -> str:
    parts = [f"POST {apispec.ENDPOINT} (heroku), POST {apispec.STABILITY_ENDPOINT} "
             f"(stability), POST {bedrock.ROUTE.format(model_id=bedrock.MODEL_ID)} (bedrock)",
             "key required" if options.key is not None else "any bearer token accepted"]
    if options.rpm:
        parts.append(f"limit {options.rpm} requests per {options.window:g} s")
    if options.latency_ms:
        parts.append(f"+{options.latency_ms:g} ms latency")
    if options.flat:
        parts.append("flat pictures")
    if options.fail_rate:
        parts.append(f"faults {options.fail_rate:.0%} of {', '.join(options.faults)} "
                     f"(seed {options.fault_seed})")
    if options.stability_limit:
        parts.append(f"stability limit {options.stability_limit} per "
                     f"{options.stability_window:g} s, then {options.stability_lockout:g} s "
                     "locked out")
    if options.stability_retry_after:
        parts.append("Retry-After on the stability path's 429s")
    if options.script:
        parts.append("scripted faults " + ",".join(f"{n}:{k}" for n, k in
                                                   sorted(options.script.items())))
    return "  " + "; ".join(parts)


def serve(options: ServerOptions, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM; prints its URL to stderr."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options, host, port))


__all__ = [
    "FAULT_KINDS",
    "PLACEHOLDERS_VARIABLE",
    "flat_placeholders",
    "MAX_REQUEST_BYTES",
    "SERVICE_KEY",
    "STATS_KEY",
    "RunningServer",
    "ServerOptions",
    "ServerStats",
    "SlidingWindow",
    "error_response",
    "make_app",
    "running_server",
    "serve",
    "validate",
]

"""The embedded API server: api.md's `POST /v1/images/generations`, offline, on aiohttp,
and Stability AI's `POST /v2beta/stable-image/generate/ultra` beside it
(imagebatch.service.stability).

It validates bodies exactly as the hosted service does, renders a deterministic picture per
request in a process pool (imagebatch.service.render), and can play the service's bad days on
demand: a sliding-window rate limit with OpenAI-style headers, added latency, and injected
faults (429, 5xx, dropped connections, bodies that lie) chosen deterministically from a seed,
so a run against it is reproducible. `imagebatch run` starts it when no URL is configured;
`imagebatch serve` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import math
import multiprocessing
import os
import re
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import UsageError
from ..planning import apispec
from ..planning.plan import job_key
from . import chat
from .render import render

FAULT_KINDS: tuple[str, ...] = (
    "429", "500", "503", "reset", "truncate", "bad-base64", "not-image",
    "wrong-format", "wrong-size", "html", "stall",
)

LISTEN_BACKLOG = 1024
MAX_REQUEST_BYTES = 1024 * 1024  # far above any valid body (two 10,000-character prompts)
RENDER_CACHE_BYTES = 96 * 1024 * 1024  # recent renders, so retries of a body are cheap
RENDER_CACHE_ENTRIES = 256
FILE_STORE_BYTES = 128 * 1024 * 1024  # images served by `response_format: url`
FILE_STORE_ENTRIES = 256
ATTEMPTS_TRACKED = 100_000  # bodies whose attempt count is remembered for fault_attempts
FILES_PREFIX = "/v1/images/files/"

_ALLOWED_FIELDS = frozenset({"model", "response_format", *apispec.REQUEST_FIELDS})
_FAIL_TRIGGER = re.compile(r"\[\[fail:(\d{3})\]\]")
_NOT_IMAGE = b"imagebatch local server: these bytes are deliberately not an image.\n" * 40

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "authorization_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_MESSAGES: dict[int, str] = {
    401: "Invalid API key",
    403: "You do not have access to that model",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


@dataclass(frozen=True)
class ServerOptions:
    """How the embedded server behaves: key, latency, rate limit, faults, render workers."""

    key: str | None = None  # bearer token required; None accepts any (or none)
    # The key is refused (401) once this many images were served: a key revoked mid-run.
    revoke_after: int | None = None
    latency_ms: float = 0.0  # added to every response
    rpm: int | None = None  # sliding-window request limit; None = unlimited
    window: float = 60.0  # seconds of the sliding window
    retry_after: bool = True  # 429s carry Retry-After (whole seconds, rounded up)
    fail_rate: float = 0.0  # fraction of requests answered with an injected fault
    faults: tuple[str, ...] = FAULT_KINDS  # which kinds fail_rate draws from
    fault_seed: int = 0  # deterministic choice of which requests fail and how
    fault_attempts: int | None = None  # only a body's first N attempts may be faulted
    # Scripted faults: POST number (1-based, in arrival order) -> fault kind. A scripted
    # request gets exactly that fault, whatever fail_rate draws, so a test can assert
    # exact behaviour ("the second request fails with a 500").
    script: Mapping[int, str] = field(default_factory=dict)
    keep_bodies: bool = False  # record every POST body and its headers in stats (for tests)
    stall_seconds: float = 30.0  # how long the `stall` fault holds the response
    workers: int | None = None  # render process pool size; None = os.cpu_count()
    # The Stability path's limit: beyond `stability_limit` requests in `stability_window`
    # seconds, every request is refused (429) for `stability_lockout` seconds. None: no limit
    # (the lockout fault still locks out).
    stability_limit: int | None = None
    stability_window: float = apispec.STABILITY_WINDOW
    stability_lockout: float = apispec.STABILITY_LOCKOUT
    # Stability documents no Retry-After on its 429s: none unless asked for (then the
    # lockout's remaining seconds, rounded up)
    stability_retry_after: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "script", dict(self.script))
        from .stability import STABILITY_FAULTS

        known = (*FAULT_KINDS, *STABILITY_FAULTS)
        unknown = [f for f in (*self.faults, *self.script.values()) if f not in known]
        if unknown:
            raise ValueError(
                f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        if self.stability_limit is not None and self.stability_limit < 1:
            raise ValueError("stability_limit must be at least 1 (or None for no limit)")
        if self.stability_window <= 0 or self.stability_lockout < 0:
            raise ValueError("stability_window must be positive, stability_lockout not negative")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        if self.fail_rate > 0 and not self.faults:
            raise ValueError("fail_rate is set but no fault kinds are enabled")
        if self.rpm is not None and self.rpm < 1:
            raise ValueError(f"rpm must be at least 1 (or None for no limit), got {self.rpm}")
        if self.window <= 0:
            raise ValueError(f"window must be positive, got {self.window}")
        if self.latency_ms < 0 or self.stall_seconds < 0:
            raise ValueError("latency_ms and stall_seconds cannot be negative")
        if self.fault_attempts is not None and self.fault_attempts < 0:
            raise ValueError(f"fault_attempts cannot be negative, got {self.fault_attempts}")
        if any(n < 1 for n in self.script):
            raise ValueError("scripted faults are numbered from 1 (the first request)")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.revoke_after is not None and self.revoke_after < 0:
            raise ValueError(f"revoke_after cannot be negative, got {self.revoke_after}")


@dataclass
class ServerStats:
    """Live counters: POSTs received, images actually rendered, answers by status, faults."""

    requests: int = 0
    renders: int = 0
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    bodies: list[bytes] = field(default_factory=list)  # with ServerOptions.keep_bodies
    # Every POST's headers, with keep_bodies too; never Authorization (keys are kept nowhere).
    headers: list[dict[str, str]] = field(default_factory=list)


STATS_KEY = web.AppKey("imagebatch_server_stats", ServerStats)


@dataclass(frozen=True)
class RunningServer:
    """A started server: its base URL (no trailing slash), port and live stats."""

    url: str
    port: int
    stats: ServerStats
    app: web.Application


class InvalidRequest(Exception):
    """A body that breaks api.md's rules; the message names every field at fault."""


def error_response(
    status: int, message: str | None = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    """api.md's error body: {"error": {"code": status, "message": ..., "type": ...}}."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    doc = {"error": {"code": status, "message": message or _MESSAGES.get(status, f"HTTP {status}"),
                     "type": kind}}
    return web.json_response(doc, status=status, headers=headers)


def validate(body: Any) -> dict[str, Any]:
    """The body itself when it follows api.md's rules; InvalidRequest naming each problem."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    problems: list[str] = []
    for name in sorted(set(body) - _ALLOWED_FIELDS):
        problems.append(f"unknown field {name!r}")

    def text(name: str, *, required: bool, nonempty: bool, limit: int | None) -> None:
        if name not in body:
            if required:
                problems.append(f"{name!r} is required")
            return
        value = body[name]
        if not isinstance(value, str):
            problems.append(f"{name!r} must be a string, got {type(value).__name__}")
        elif nonempty and not value.strip():
            problems.append(f"{name!r} must not be empty")
        elif limit is not None and len(value) > limit:
            problems.append(f"{name!r} is {len(value):,} characters; at most {limit:,} allowed")

    def choice(name: str, allowed: tuple[str, ...]) -> None:
        if name in body and body[name] not in allowed:
            problems.append(f"{name!r} must be one of {', '.join(allowed)}; got {body[name]!r}")

    text("model", required=True, nonempty=True, limit=None)
    text("prompt", required=True, nonempty=True, limit=apispec.MAX_PROMPT_CHARS)
    text("negative_prompt", required=False, nonempty=False, limit=apispec.MAX_PROMPT_CHARS)
    choice("aspect_ratio", apispec.ASPECT_RATIOS)
    choice("size", apispec.SIZES)
    choice("output_format", apispec.OUTPUT_FORMATS)
    choice("response_format", apispec.RESPONSE_FORMATS)
    if "seed" in body:
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= apispec.MAX_SEED:
            problems.append(f"'seed' must be an integer from 0 to {apispec.MAX_SEED}; got {seed!r}")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return body


def _duration(seconds: float) -> str:
    """OpenAI-style duration, rounded up: '51s' from ten seconds on, '1.5s' below."""
    if seconds >= 10:
        return f"{math.ceil(seconds)}s"
    tenths = math.ceil(max(0.0, seconds) * 10 - 1e-9)
    return f"{tenths // 10}s" if tenths % 10 == 0 else f"{tenths / 10:.1f}s"


class SlidingWindow:
    """At most `limit` admitted requests in any `window` seconds; reports its state as headers."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._stamps: collections.deque[float] = collections.deque()

    def _trim(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.window:
            self._stamps.popleft()

    def wait(self, now: float) -> float:
        """Seconds until a slot frees (0 when one is free now)."""
        self._trim(now)
        if len(self._stamps) < self.limit:
            return 0.0
        return max(0.0, self._stamps[0] + self.window - now)

    def take(self, now: float) -> None:
        """Count one request admitted at `now`."""
        self._trim(now)
        self._stamps.append(now)

    def headers(self, now: float) -> dict[str, str]:
        """x-ratelimit-* headers: the limit, slots left, and when the oldest request leaves."""
        self._trim(now)
        reset = self._stamps[0] + self.window - now if self._stamps else 0.0
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(max(0, self.limit - len(self._stamps))),
            "x-ratelimit-reset-requests": _duration(reset),
        }


class _BoundedStore:
    """An LRU of bytes bounded by entry count and total size."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._items: collections.OrderedDict[Any, tuple[bytes, str]] = collections.OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def get(self, key: Any) -> tuple[bytes, str] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Any, data: bytes, kind: str = "") -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        self._items[key] = (data, kind)
        self._bytes += len(data)
        while self._items and (len(self._items) > self._max_entries
                               or self._bytes > self._max_bytes):
            _, (dropped, _) = self._items.popitem(last=False)
            self._bytes -= len(dropped)


def _mp_context() -> Any:
    """forkserver where there is one: forking a threaded server process is unsafe."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # Workers start with Pillow and the renderer imported, not the caller's __main__.
        ctx.set_forkserver_preload(["imagebatch.service.render"])
        return ctx
    return multiprocessing.get_context("spawn")


class _Service:
    """Per-app state: options, stats, window, caches and the render pool."""

    def __init__(self, options: ServerOptions, stats: ServerStats) -> None:
        self.options = options
        self.stats = stats
        self.window = SlidingWindow(options.rpm, options.window) if options.rpm else None
        self.pool: Executor | None = None
        self._renders = _BoundedStore(RENDER_CACHE_ENTRIES, RENDER_CACHE_BYTES)
        self._inflight: dict[tuple[Any, ...], asyncio.Future[bytes]] = {}
        self.files = _BoundedStore(FILE_STORE_ENTRIES, FILE_STORE_BYTES)
        self._attempts: collections.OrderedDict[str, int] = collections.OrderedDict()
        from .stability import Lockout

        self.lockout = Lockout(options.stability_limit, options.stability_window,
                               options.stability_lockout)

    # -- faults -----------------------------------------------------------------------------

    def attempt(self, key: str) -> int:
        """Count one more attempt of the body with this key; its 1-based attempt number."""
        n = self._attempts.pop(key, 0) + 1
        self._attempts[key] = n
        if len(self._attempts) > ATTEMPTS_TRACKED:
            self._attempts.popitem(last=False)
        return n

    def fault_for(self, key: str, attempt: int, number: int = 0) -> str | None:
        """The fault this attempt of this body (POST `number`) gets, if any: a pure function
        of the options."""
        o = self.options
        if number in o.script:
            return o.script[number]
        if o.fail_rate <= 0 or (o.fault_attempts is not None and attempt > o.fault_attempts):
            return None
        digest = hashlib.sha256(f"{o.fault_seed}:{key}:{attempt}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2.0**64 >= o.fail_rate:
            return None
        return o.faults[int.from_bytes(digest[8:16], "big") % len(o.faults)]

    # -- rendering --------------------------------------------------------------------------

    async def image(self, request: dict[str, Any], seed: int) -> bytes:
        """Rendered bytes for (request, seed): from the cache, a render in flight, or a new one."""
        w, h = apispec.pixel_size(request)
        fmt = apispec.image_format(request)
        key = (request["prompt"], request.get("negative_prompt", ""), seed, w, h, fmt)
        hit = self._renders.get(key)
        if hit is not None:
            return hit[0]
        fut = self._inflight.get(key)
        if fut is None:
            job = {"prompt": request["prompt"],
                   "negative_prompt": request.get("negative_prompt", ""),
                   "size": f"{w}x{h}", "output_format": fmt}
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self.pool, render, job, seed)
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._rendered(key, f))
        # Shielded: a client that hangs up must not cancel a render others may be waiting on.
        return await asyncio.shield(fut)

    def _rendered(self, key: tuple[Any, ...], fut: asyncio.Future[bytes]) -> None:
        self._inflight.pop(key, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        self.stats.renders += 1
        self._renders.put(key, fut.result())

    # -- handlers ---------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self.options.key is None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.options.key.encode()
        )

    def _revoked(self) -> bool:
        after = self.options.revoke_after
        return after is not None and self.stats.by_status[200] >= after

    def _limited(self, headers: dict[str, str]) -> web.Response:
        if self.options.retry_after and self.window is not None:
            wait = self.window.wait(asyncio.get_running_loop().time())
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        elif self.options.retry_after:
            headers["Retry-After"] = "1"
        return error_response(429, headers=headers)

    async def generations(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/images/generations."""
        loop = asyncio.get_running_loop()
        if not self._authorized(request) or self._revoked():
            return error_response(401, "Invalid API key: send 'Authorization: Bearer <key>'")
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return error_response(413, f"Request body too large: over {MAX_REQUEST_BYTES} bytes")
        number = self.stats.requests  # this POST's number, counted by the middleware
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"Request body too large: over {MAX_REQUEST_BYTES} bytes")
        if self.options.keep_bodies:
            self.stats.bodies.append(raw)
        window = self.window
        if window is not None and window.wait(loop.time()) > 0:
            return self._limited({})
        try:
            try:
                doc = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise InvalidRequest(
                    "request body is not valid JSON (send the JSON object as the body)"
                ) from None
            body = validate(doc)
        except InvalidRequest as exc:
            if window is not None:
                window.take(loop.time())
            return error_response(400, str(exc))

        trigger = _FAIL_TRIGGER.search(body["prompt"])
        if trigger and 400 <= int(trigger.group(1)) <= 599:
            status = int(trigger.group(1))
            self.stats.faults[f"fail:{status}"] += 1
            if status == 429:
                return self._limited({})
            if window is not None:
                window.take(loop.time())
            return error_response(status, f"{_MESSAGES.get(status, f'HTTP {status}')} "
                                          f"(requested by [[fail:{status}]] in the prompt)")

        key = job_key(body)
        fault = self.fault_for(key, self.attempt(key), number)
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault == "429":
            return self._limited({})  # refused, so it does not count in the window
        if window is not None:
            window.take(loop.time())
        if fault in ("500", "503"):
            return error_response(int(fault), f"{_MESSAGES[int(fault)]} (injected fault)")
        if fault == "reset":
            return _reset(request)
        if fault == "html":
            return web.Response(status=200, content_type="text/html", text=_HTML_PAGE)
        if fault == "stall":
            await asyncio.sleep(self.options.stall_seconds)

        seed = body.get("seed") or 1 + secrets.randbelow(apispec.MAX_SEED)
        fmt = apispec.image_format(body)
        draw = dict(body)
        if fault == "wrong-format":
            draw["output_format"] = "jpeg" if fmt == "png" else "png"
        elif fault == "wrong-size":
            w, h = apispec.pixel_size(body)
            draw["size"] = f"{w // 2}x{h // 2}"
        if fault == "not-image":
            data = _NOT_IMAGE
        else:
            try:
                data = await self.image(draw, seed)
            except Exception as exc:  # noqa: BLE001 - a broken pool must answer, not hang
                return error_response(500, f"render failed: {type(exc).__name__}")

        created = int(time.time())
        if body.get("response_format") == "url":
            name = f"{secrets.token_hex(16)}.{'jpg' if fmt == 'jpeg' else 'png'}"
            self.files.put(name, data, "image/jpeg" if fmt == "jpeg" else "image/png")
            url = f"{request.scheme}://{request.host}{FILES_PREFIX}{name}"
            item = json.dumps({"url": url, "revised_prompt": ""})
        else:
            b64 = base64.b64encode(data).decode("ascii")
            if fault == "bad-base64":
                mid = len(b64) // 2
                b64 = b64[:mid] + "!!not*base64!!" + b64[mid:]
            item = f'{{"b64_json":"{b64}","revised_prompt":""}}'
        text = f'{{"created":{created},"data":[{item}]}}'
        if fault == "truncate":
            text = text[: len(text) // 2]
        return web.Response(status=200, body=text.encode("ascii"), content_type="application/json")

    async def stability(self, request: web.Request) -> web.StreamResponse:
        """POST /v2beta/stable-image/generate/ultra: Stability AI's shape."""
        from . import stability

        return await stability.generate(self, request)

    async def file(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/images/files/<id>.<ext>: an image made with response_format url."""
        item = self.files.get(request.match_info["name"])
        if item is None:
            return error_response(404, "No such image (unknown id, or expired from the store)")
        data, content_type = item
        return web.Response(body=data, content_type=content_type)


SERVICE_KEY = web.AppKey("imagebatch_server_service", _Service)

_HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>The upstream server returned an invalid response.</p>"
    "</body></html>\n"
)


def _reset(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer (an RST where the platform allows it)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Nothing can be written now; aiohttp drops this response on the closed transport.
    return web.Response(status=200)


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
        await asyncio.sleep(service.options.latency_ms / 1000.0)
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
                      f"POST {apispec.ENDPOINT} (or {apispec.STABILITY_ENDPOINT})"
        response = error_response(exc.status, message, headers=headers)
    transport = request.transport
    if transport is None or transport.is_closing():
        return response  # a dropped connection answers nothing; faults["reset"] counts it
    if post:
        stats.by_status[response.status] += 1
    if service.window is not None and request.path == apispec.ENDPOINT:
        for name, value in service.window.headers(asyncio.get_running_loop().time()).items():
            response.headers.setdefault(name, value)
    return response


def make_app(options: ServerOptions) -> web.Application:
    """The aiohttp application; its stats are at app[STATS_KEY], its pool starts with it."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[_middleware])
    stats = ServerStats()
    service = _Service(options, stats)
    app[STATS_KEY] = stats
    app[SERVICE_KEY] = service
    app.router.add_post(apispec.ENDPOINT, service.generations)
    app.router.add_post(apispec.STABILITY_ENDPOINT, service.stability)
    app.router.add_get(FILES_PREFIX + "{name}", service.file)
    app.router.add_post(chat.ENDPOINT, chat.completions)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        # Made here, inside the running loop, and gone with the app.
        workers = options.workers or os.cpu_count() or 1
        service.pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
        yield
        executor, service.pool = service.pool, None
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
    parts = [f"POST {apispec.ENDPOINT} (heroku), POST {apispec.STABILITY_ENDPOINT} (stability)",
             "key required" if options.key is not None else "any bearer token accepted"]
    if options.rpm:
        parts.append(f"limit {options.rpm} requests per {options.window:g} s")
    if options.latency_ms:
        parts.append(f"+{options.latency_ms:g} ms latency")
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

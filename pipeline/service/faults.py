"""The embedded server's one fault pipeline, shared by every provider's fake.

Every request, whatever its provider, walks the same ladder here (`Service.handle`): the
key, the request's size, reading its body, the path's rate limit (a sliding window, or
Stability's lockout), its validation, a `[[fail:NNN]]` in the prompt, the scripted or drawn
fault, then the answer. A fake (imagebatch.service.heroku, .stability, .bedrock) subclasses
`Fake`: it only parses its request and shapes its answers and errors; it never decides
whether a request fails. Time is read from `ServerOptions.clock` and waited through
`ServerOptions.sleep`, so tests can play rate windows, lockouts, stalls and latency on a
clock of their own.

This module imports no fake: the fakes import it, and the app module (server) imports them.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import math
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from ..errors import ConfigError
from ..planning import apispec
from .render import render, render_flat

#: Faults every path plays (a path may shape them its own way, or ignore a body fault that
#: its answer has no room for, as Stability's raw bytes have for bad-base64).
FAULT_KINDS: tuple[str, ...] = (
    "429", "500", "503", "reset", "truncate", "bad-base64", "not-image",
    "wrong-format", "wrong-size", "html", "stall",
)
#: Faults only the Stability path plays.
STABILITY_FAULTS: tuple[str, ...] = ("content-filtered", "lockout", "moderation", "422", "402")
#: Faults only the Bedrock path plays (content-filtered is Stability's too).
BEDROCK_FAULTS: tuple[str, ...] = ("model-timeout", "quota")
#: Every kind a ServerOptions may name: the vocabulary of `--faults` and `--fault-at`.
KNOWN_FAULTS: tuple[str, ...] = (*FAULT_KINDS, *STABILITY_FAULTS, *BEDROCK_FAULTS)

ATTEMPTS_TRACKED = 100_000  # bodies whose attempt count is remembered for fault_attempts
RENDER_CACHE_BYTES = 96 * 1024 * 1024  # recent renders, so retries of a body are cheap
RENDER_CACHE_ENTRIES = 256

FAIL_TRIGGER = re.compile(r"\[\[fail:(\d{3})\]\]")
FILTERED_MARKER = "[[filtered]]"
NOT_IMAGE = b"imagebatch local server: these bytes are deliberately not an image.\n" * 40
HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>The upstream server returned an invalid response.</p>"
    "</body></html>\n"
)


#: Which placeholder pictures the embedded server of `imagebatch run` makes: `landscape`
#: (the default, pictures that say what made them) or `flat` (ServerOptions.flat).
PLACEHOLDERS_VARIABLE = "IMAGEBATCH_PLACEHOLDERS"


def flat_placeholders(env: Mapping[str, str]) -> bool:
    """Whether $IMAGEBATCH_PLACEHOLDERS asks for flat pictures; ConfigError for a value
    that is neither `landscape` nor `flat`, before anything is made."""
    value = env.get(PLACEHOLDERS_VARIABLE, "").strip().lower()
    if value not in ("", "landscape", "flat"):
        raise ConfigError(f"{PLACEHOLDERS_VARIABLE} is {value[:20]!r}: use landscape or flat")
    return value == "flat"


@dataclass(frozen=True)
class ServerOptions:
    """How the embedded server behaves: key, latency, rate limit, faults, render workers."""

    key: str | None = None  # bearer token required; None accepts any (or none)
    # The Bedrock path also takes a SigV4 Authorization header naming this access key id
    # (the signature is not checked). None: only the bearer key, or anything without a key.
    aws_access_key_id: str | None = None
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
    # Plain one-colour pictures (render_flat), made in a thread: no render processes are
    # started and an image costs a small part of a landscape (a PNG 2 ms against 45 ms at
    # 1 MP, a JPEG 3 ms). For dry runs of big manifests and test suites, where what the
    # pictures show does not matter.
    flat: bool = False
    # The Stability path's limit: beyond `stability_limit` requests in `stability_window`
    # seconds, every request is refused (429) for `stability_lockout` seconds. None: no limit
    # (the lockout fault still locks out).
    stability_limit: int | None = None
    stability_window: float = apispec.STABILITY_WINDOW
    stability_lockout: float = apispec.STABILITY_LOCKOUT
    # Stability documents no Retry-After on its 429s: none unless asked for (then the
    # lockout's remaining seconds, rounded up)
    stability_retry_after: bool = False
    # Content Credentials on every image served, as a provider that signs its output does
    # (`serve --sign`: the IMAGEBATCH_C2PA_* identity): the provider-signed path, offline.
    signer: Any = field(default=None, compare=False, repr=False)  # credentials.SignerConfig
    # The server's time: rate windows, lockouts, stalls and latency read `clock` (seconds,
    # monotonic) and wait through `sleep`, so a test can pass a clock of its own and play
    # a minute-long window without waiting for it.
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    sleep: Callable[[float], Awaitable[object]] = field(default=asyncio.sleep, compare=False,
                                                        repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(self.faults))
        object.__setattr__(self, "script", dict(self.script))
        unknown = [f for f in (*self.faults, *self.script.values()) if f not in KNOWN_FAULTS]
        if unknown:
            raise ValueError(
                f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(KNOWN_FAULTS)}"
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


# -- rate limits --------------------------------------------------------------------------

class Limiter(Protocol):
    """A path's rate limit: whether a request is admitted now, and counting one that was."""

    def admits(self, now: float) -> bool:
        """True when a request arriving at `now` may go on (it is counted by `take`)."""

    def wait(self, now: float) -> float:
        """Seconds until a request would be admitted again (0 when one would be now)."""

    def take(self, now: float) -> None:
        """Count one request answered at `now`."""


def duration(seconds: float) -> str:
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

    def admits(self, now: float) -> bool:
        """True when a slot is free now."""
        return self.wait(now) <= 0

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
            "x-ratelimit-reset-requests": duration(reset),
        }


class Lockout:
    """Stability's limit: `limit` requests in `window` s; one more locks out for `lockout` s."""

    def __init__(self, limit: int | None, window: float, lockout: float) -> None:
        self.limit, self.window, self.lockout = limit, window, lockout
        self._stamps: list[float] = []
        self.until = 0.0

    def lock(self, now: float) -> None:
        """Start a lockout now."""
        self.until = now + self.lockout

    def admits(self, now: float) -> bool:
        """False while locked out; the request that goes over the limit starts a lockout."""
        if now < self.until:
            return False
        self._stamps = [t for t in self._stamps if t > now - self.window]
        if self.limit is not None and len(self._stamps) >= self.limit:
            self.lock(now)
            return False
        return True

    def wait(self, now: float) -> float:
        """Seconds left of the lockout (0 when none is running)."""
        return max(0.0, self.until - now)

    def take(self, now: float) -> None:
        """Count one request answered at `now`."""
        self._stamps.append(now)


# -- what a fake is -----------------------------------------------------------------------

class Invalid(Exception):
    """A request its provider refuses as it stands (400, 413, ...): the status and each
    problem, for the fake to shape."""

    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.status = status
        self.errors = errors


class Fake(abc.ABC):
    """One provider's shape. The pipeline decides what happens to a request; a fake reads
    its body and says how each answer looks for that provider."""

    #: The fault kinds of its own that this path plays, beyond FAULT_KINDS.
    plays: frozenset[str] = frozenset()
    #: Largest request body, in bytes (a larger Content-Length is refused unread).
    max_bytes: int = 1024 * 1024

    def __init__(self, service: Service) -> None:
        self.service = service

    @property
    def options(self) -> ServerOptions:
        """The server's options, read at each request (a test may switch them)."""
        return self.service.options

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries the key: `Authorization: Bearer <key>`, or anything
        when the server has no key."""
        return bearer_matches(request, self.options.key)

    def limiter(self) -> Limiter | None:
        """This path's rate limit, made once per server from the options; None: unlimited."""
        return None

    @abc.abstractmethod
    async def read(self, request: web.Request) -> Any:
        """The request's body as received (Invalid when it cannot be read)."""

    @abc.abstractmethod
    def recorded(self, raw: Any) -> bytes:
        """What ServerStats.bodies keeps of a body (ServerOptions.keep_bodies)."""

    @abc.abstractmethod
    def validate(self, raw: Any) -> Any:
        """The request as values, by the provider's rules; Invalid naming each problem."""

    @abc.abstractmethod
    def key(self, body: Any) -> str:
        """A stable key of the request: drawn faults and attempts are counted per key."""

    @abc.abstractmethod
    def prompt(self, body: Any) -> str:
        """The request's prompt (where `[[fail:NNN]]` and `[[filtered]]` are looked for)."""

    @abc.abstractmethod
    def too_large(self) -> Invalid:
        """How the provider refuses a body over max_bytes."""

    @abc.abstractmethod
    def unauthorized(self) -> web.Response:
        """The answer to a missing, wrong or revoked key."""

    @abc.abstractmethod
    def invalid(self, problem: Invalid) -> web.Response:
        """The answer to a body the provider refuses."""

    @abc.abstractmethod
    def rate_limited(self, limiter: Limiter | None, now: float) -> web.Response:
        """The provider's 429, with whatever it says about when to come back."""

    @abc.abstractmethod
    def error(self, status: int, detail: str) -> web.Response:
        """The provider's error answer for `status`; `detail` says why (injected, or asked
        for by the prompt)."""

    def fault_error(self, fault: str) -> web.Response | None:
        """The error answer of one of its own fault kinds (None: not an error fault)."""
        return None

    @abc.abstractmethod
    async def answer(self, request: web.Request, body: Any, fault: str | None
                     ) -> web.StreamResponse:
        """The success answer, spoilt as the body fault (`truncate`, `wrong-size`, ...)
        asks."""


def drawing(body: Mapping[str, Any], fault: str | None) -> dict[str, Any]:
    """What a fake of the form-and-image shape (Stability, Bedrock) draws for a parsed
    request: a variation from the prompt, the input and the strength (other inputs, other
    pictures; the caption says what it varies), spoiled as the `wrong-format` and
    `wrong-size` faults ask."""
    fmt = body["output_format"]
    prompt = body["prompt"]
    if "image_sha256" in body:
        prompt = f"{prompt} (variation {body['strength']:g} of {body['image_sha256'][:8]})"
    draw = {"prompt": prompt, "negative_prompt": body["negative_prompt"],
            "aspect_ratio": body["aspect_ratio"], "output_format": fmt}
    if fault == "wrong-format":
        draw["output_format"] = "jpeg" if fmt != "jpeg" else "png"
    elif fault == "wrong-size":
        draw["size"] = "1024x1024" if body["aspect_ratio"] != "1:1" else "1344x768"
    return draw


def bearer_matches(request: web.Request, key: str | None) -> bool:
    """True for `Authorization: Bearer <key>` (compared in constant time); any when key is
    None."""
    if key is None:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              key.encode())


def reset_connection(request: web.Request) -> web.StreamResponse:
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


class BoundedStore:
    """An LRU of bytes bounded by entry count and total size."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._items: collections.OrderedDict[Any, tuple[bytes, str]] = collections.OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def get(self, key: Any) -> tuple[bytes, str] | None:
        """The (bytes, content type) kept under key, now the most recently used; or None."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Any, data: bytes, kind: str = "") -> None:
        """Keep data under key, dropping the least recently used beyond the bounds."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        self._items[key] = (data, kind)
        self._bytes += len(data)
        while self._items and (len(self._items) > self._max_entries
                               or self._bytes > self._max_bytes):
            _, (dropped, _) = self._items.popitem(last=False)
            self._bytes -= len(dropped)


# -- the pipeline -------------------------------------------------------------------------

class Service:
    """Per-app state every path shares: options, stats, rate limits, attempts, the render
    cache and pool; and the ladder each request walks (`handle`)."""

    def __init__(self, options: ServerOptions, stats: ServerStats) -> None:
        self.options = options
        self.stats = stats
        self.pool: Executor | None = None
        self._renders = BoundedStore(RENDER_CACHE_ENTRIES, RENDER_CACHE_BYTES)
        # the base64 of the most recent renders: a JSON answer is built from it each time
        self._b64 = BoundedStore(RENDER_CACHE_ENTRIES // 4, RENDER_CACHE_BYTES // 4)
        self._inflight: dict[tuple[Any, ...], asyncio.Future[bytes]] = {}
        self._attempts: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._limiters: dict[int, Limiter | None] = {}

    # -- time -------------------------------------------------------------------------------

    def now(self) -> float:
        """The server's clock (ServerOptions.clock)."""
        return self.options.clock()

    async def sleep(self, seconds: float) -> None:
        """Wait through ServerOptions.sleep."""
        await self.options.sleep(seconds)

    def limiter(self, fake: Fake) -> Limiter | None:
        """The rate limit of `fake`'s path: one per path and server, made at first use."""
        if id(fake) not in self._limiters:
            self._limiters[id(fake)] = fake.limiter()
        return self._limiters[id(fake)]

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

    def revoked(self) -> bool:
        """True once revoke_after images were served: the key stops working."""
        after = self.options.revoke_after
        return after is not None and self.stats.by_status[200] >= after

    # -- the ladder ---------------------------------------------------------------------------

    async def handle(self, fake: Fake, request: web.Request) -> web.StreamResponse:
        """One request, through the steps every provider shares, in one order.

        A request refused before its body is read (key, size, an unreadable body) counts in
        no rate limit; after that, every answer but a 429 counts in the path's limit, as a
        refusal is not a request served.
        """
        options, stats = self.options, self.stats
        if not fake.authorized(request) or self.revoked():
            return fake.unauthorized()
        number = stats.requests  # this POST's number, counted by the app's middleware
        if request.content_length is not None and request.content_length > fake.max_bytes:
            return fake.invalid(fake.too_large())
        try:
            raw = await fake.read(request)
        except Invalid as exc:
            return fake.invalid(exc)
        if options.keep_bodies:
            stats.bodies.append(fake.recorded(raw))
        # From here to the count, nothing awaits: concurrent requests see one limiter state.
        limiter = self.limiter(fake)
        now = self.now()
        if limiter is not None and not limiter.admits(now):
            return fake.rate_limited(limiter, now)
        try:
            body = fake.validate(raw)
        except Invalid as exc:
            _take(limiter, now)
            return fake.invalid(exc)

        trigger = FAIL_TRIGGER.search(fake.prompt(body))
        if trigger and 400 <= int(trigger.group(1)) <= 599:
            status = int(trigger.group(1))
            stats.faults[f"fail:{status}"] += 1
            if status == 429:
                return fake.rate_limited(limiter, now)
            _take(limiter, now)
            return fake.error(status, f"requested by [[fail:{status}]] in the prompt")

        key = fake.key(body)
        fault = self.fault_for(key, self.attempt(key), number)
        if fault is not None:
            stats.faults[fault] += 1
            if fault not in FAULT_KINDS and fault not in fake.plays:
                fault = None  # another provider's fault: this path answers as usual
        if fault == "lockout" and isinstance(limiter, Lockout):
            limiter.lock(now)
        if fault in ("429", "lockout"):
            return fake.rate_limited(limiter, now)  # refused, so it does not count
        _take(limiter, now)
        if fault in ("500", "503"):
            return fake.error(int(fault), "injected fault")
        if fault is not None and (response := fake.fault_error(fault)) is not None:
            return response
        if fault == "reset":
            return reset_connection(request)
        if fault == "html":
            return web.Response(status=200, content_type="text/html", text=HTML_PAGE)
        if fault == "stall":
            await self.sleep(options.stall_seconds)
        return await fake.answer(request, body, fault)

    # -- rendering --------------------------------------------------------------------------

    @staticmethod
    def _render_key(request: dict[str, Any], seed: int) -> tuple[Any, ...]:
        w, h = apispec.pixel_size(request)
        return (request["prompt"], request.get("negative_prompt", ""), seed, w, h,
                apispec.image_format(request))

    async def image_b64(self, request: dict[str, Any], seed: int) -> bytes:
        """`image`'s bytes in base64 (ASCII), the recent ones kept: encoding them again for
        every answer of a cached render was a fifth of the server's CPU a request."""
        if self.options.signer is not None:  # signed per answer: nothing to keep
            return base64.b64encode(await self.image(request, seed))
        key = self._render_key(request, seed)
        hit = self._b64.get(key)
        if hit is not None:
            return hit[0]
        b64 = base64.b64encode(await self.image(request, seed))
        self._b64.put(key, b64)
        return b64

    async def image(self, request: dict[str, Any], seed: int) -> bytes:
        """Rendered bytes for (request, seed): from the cache, a render in flight, or a new one."""
        key = self._render_key(request, seed)
        w, h, fmt = key[3:]
        hit = self._renders.get(key)
        if hit is not None:
            return hit[0]
        fut = self._inflight.get(key)
        if fut is None:
            job = {"prompt": request["prompt"],
                   "negative_prompt": request.get("negative_prompt", ""),
                   "size": f"{w}x{h}", "output_format": fmt}
            loop = asyncio.get_running_loop()
            if self.options.flat:
                fut = loop.run_in_executor(None, render_flat, job, seed)
            else:
                fut = loop.run_in_executor(self.pool, render, job, seed)
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._rendered(key, f))
        # Shielded: a client that hangs up must not cancel a render others may be waiting on.
        data = await asyncio.shield(fut)
        if self.options.signer is not None:
            # signed per answer, as a provider signs what it serves (the render stays cached)
            from ..storage.credentials import sign_image

            data = await asyncio.to_thread(sign_image, data, fmt, self.options.signer)
        return data

    def _rendered(self, key: tuple[Any, ...], fut: asyncio.Future[bytes]) -> None:
        self._inflight.pop(key, None)
        if fut.cancelled() or fut.exception() is not None:
            return
        self.stats.renders += 1
        self._renders.put(key, fut.result())


def _take(limiter: Limiter | None, now: float) -> None:
    if limiter is not None:
        limiter.take(now)


__all__ = [
    "BEDROCK_FAULTS",
    "FAULT_KINDS",
    "FILTERED_MARKER",
    "HTML_PAGE",
    "KNOWN_FAULTS",
    "NOT_IMAGE",
    "STABILITY_FAULTS",
    "BoundedStore",
    "Fake",
    "Invalid",
    "Limiter",
    "Lockout",
    "ServerOptions",
    "ServerStats",
    "Service",
    "SlidingWindow",
    "bearer_matches",
        "duration",
    "reset_connection",
]

"""A small aiohttp stand-in for the image API, for the runner's integration tests.

Real HTTP on 127.0.0.1: latency, a key, a sliding-window rate limit with OpenAI-style
headers, and scripted faults (by request number) so tests can assert exact behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import time
from dataclasses import dataclass, field

from aiohttp import web
from PIL import Image

from pipeline import apispec


@dataclass
class FakeApi:
    key: str | None = None
    latency: float = 0.0
    rpm: int | None = None
    window: float = 60.0
    retry_after: bool = True
    faults: dict[int, str] = field(default_factory=dict)  # request number (1-based) -> fault
    requests: int = 0
    renders: int = 0
    bodies: list[bytes] = field(default_factory=list)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    _stamps: collections.deque = field(default_factory=collections.deque)
    _cache: dict = field(default_factory=dict)

    def _image(self, body: dict) -> bytes:
        fmt = apispec.image_format(body)
        size = apispec.pixel_size(body)
        k = (fmt, size, body.get("seed", 0) % 7)
        if k not in self._cache:
            buf = io.BytesIO()
            color = (40 * k[2], 100, 200)
            Image.new("RGB", size, color).save(buf, format="JPEG" if fmt == "jpeg" else "PNG")
            self._cache[k] = buf.getvalue()
        return self._cache[k]

    def _reply(self, status: int, doc: dict, headers: dict) -> web.Response:
        self.by_status[status] += 1
        return web.json_response(doc, status=status, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        n = self.requests
        raw = await request.read()
        self.bodies.append(raw)
        headers: dict[str, str] = {}
        if self.rpm:
            now = time.monotonic()
            while self._stamps and self._stamps[0] <= now - self.window:
                self._stamps.popleft()
            if len(self._stamps) >= self.rpm:
                reset = self._stamps[0] + self.window - now
                headers = {"x-ratelimit-limit-requests": str(self.rpm),
                           "x-ratelimit-remaining-requests": "0",
                           "x-ratelimit-reset-requests": f"{reset:.3f}s"}
                if self.retry_after:
                    headers["Retry-After"] = str(max(1, round(reset)))
                return self._reply(429, {"error": {"code": 429, "message": "Rate limit exceeded",
                                                   "type": "rate_limit_error"}}, headers)
            self._stamps.append(now)
            reset = self._stamps[0] + self.window - now
            headers = {"x-ratelimit-limit-requests": str(self.rpm),
                       "x-ratelimit-remaining-requests": str(self.rpm - len(self._stamps)),
                       "x-ratelimit-reset-requests": f"{reset:.3f}s"}
        if self.key is not None and request.headers.get("Authorization") != f"Bearer {self.key}":
            return self._reply(401, {"error": {"code": 401, "message": "Invalid API key",
                                               "type": "authentication_error"}}, headers)
        if self.latency:
            await asyncio.sleep(self.latency)
        body = json.loads(raw)
        if "[[fail:400]]" in body.get("prompt", ""):
            return self._reply(400, {"error": {"code": 400, "message": "prompt refused",
                                               "type": "invalid_request_error"}}, headers)
        fault = self.faults.get(n)
        if fault == "500":
            return self._reply(500, {"error": {"code": 500, "message": "boom",
                                               "type": "server_error"}}, headers)
        if fault == "html":
            self.by_status[200] += 1
            return web.Response(text="<html>Application error</html>", content_type="text/html")
        if fault == "reset":
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
            return web.Response(status=500)
        if fault == "stall":
            await asyncio.sleep(30)
        data = self._image(body)
        if fault == "truncate":
            data = data[: len(data) // 2]
        if fault == "wrong-size":
            buf = io.BytesIO()
            Image.new("RGB", (64, 64)).save(buf, format="PNG")
            data = buf.getvalue()
        self.renders += 1
        return self._reply(200, {"created": int(time.time()), "data": [
            {"b64_json": base64.b64encode(data).decode(), "revised_prompt": ""}]}, headers)


async def start(api: FakeApi) -> tuple[web.AppRunner, str]:
    """Serve `api` on a free loopback port; returns (runner to clean up, base URL)."""
    app = web.Application(client_max_size=2**24)
    app.router.add_post(apispec.ENDPOINT, api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"

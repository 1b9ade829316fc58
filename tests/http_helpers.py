"""A real HTTP(S) service on 127.0.0.1 that answers with what a test scripts, for the
client's unit tests: any host name (inference.example.test, images.example.test) resolves to
it through a test resolver, https is served with a self-signed certificate made here and
trusted only by the sessions this helper opens, and every request is recorded as the server
received it (method, URL, headers, body)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

#: the names the certificate is made for: every host the tests use
TEST_HOSTS = ("inference.example.test", "images.example.test", "api.stability.example.test")


@functools.lru_cache(maxsize=1)
def _certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) for TEST_HOSTS and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagebatch test service")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(h) for h in TEST_HOSTS]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _server_context() -> ssl.SSLContext:
    cert, key = _certificate()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "cert.pem").write_bytes(cert)
        (Path(folder) / "key.pem").write_bytes(key)
        context.load_cert_chain(Path(folder) / "cert.pem", Path(folder) / "key.pem")
    return context


def client_context() -> ssl.SSLContext:
    """A client context that verifies as usual and trusts the test certificate."""
    return ssl.create_default_context(cadata=_certificate()[0].decode("ascii"))


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Resolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, at the port `routes` gives for its (host, port)."""

    def __init__(self, routes: dict[tuple[str, int], int]) -> None:
        self.routes = routes

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if (host, port) not in self.routes:
            raise OSError(f"no test route for {host}:{port}")
        return [{"hostname": host, "host": "127.0.0.1", "port": self.routes[(host, port)],
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: None: answer; "disconnect": close the connection without a word; "truncate": send
    #: the headers and part of the body, then close; "hang": never answer; "raw": send the
    #: body as the whole answer, bytes that need not be HTTP, then close
    action: str | None = None


class Service:
    """Scripted answers, one per request, in the order given for each method and URL (the
    way aioresponses was used); a request with nothing scripted is answered 599."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._script: dict[tuple[str, str], list[_Answer]] = {}
        self._released = asyncio.Event()
        self.routes: dict[tuple[str, int], int] = {}
        self.http_port = self.https_port = 0
        self._sockets: list[socket.socket] = []

    def post(self, url: str, **answer: Any) -> None:
        """Answer the next POST to `url` as `answer` says (status, payload or body,
        content_type, headers, action)."""
        self._add("POST", url, **answer)

    def get(self, url: str, **answer: Any) -> None:
        """Answer the next GET to `url` as `answer` says."""
        self._add("GET", url, **answer)

    def _add(self, method: str, url: str, *, status: int = 200, payload: Any = None,
             body: bytes | str | None = None, content_type: str | None = None,
             headers: dict[str, str] | None = None, action: str | None = None) -> None:
        headers = dict(headers or {})
        if payload is not None:
            body = json.dumps(payload)
            content_type = content_type or "application/json"
        data = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        if content_type is not None or "Content-Type" not in headers:
            headers["Content-Type"] = content_type or "application/json"
        target = URL(url)
        self.route(target.host or "", target.port or 0)
        self._script.setdefault((method, str(target)), []).append(
            _Answer(status, data, headers, action))

    def route(self, host: str, port: int) -> None:
        """Send host:port (as the client names it) to this service: its http site for port
        80, its https site for any other."""
        self.routes.setdefault((host, port), self.http_port if port == 80 else self.https_port)

    def hang_connect(self, host: str, port: int) -> None:
        """Make connections to host:port never open: a listener whose one-place accept
        queue is already full drops further connection attempts unanswered."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self._sockets.append(listener)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
            self._sockets.append(filler)
        self.routes[(host, port)] = listener.getsockname()[1]

    def refuse(self, host: str, port: int) -> None:
        """Make connections to host:port refused."""
        self.routes[(host, port)] = closed_port()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        scheme = "https" if request.secure else "http"
        url = str(URL(f"{scheme}://{request.headers['Host']}{request.path_qs}"))
        self.requests.append(Seen(request.method, url, dict(request.headers),
                                  await request.read()))
        queue = self._script.get((request.method, url))
        if not queue:
            return web.Response(status=599, text=f"nothing scripted for {request.method} {url}")
        answer = queue.pop(0)
        transport = request.transport
        assert transport is not None
        if answer.action == "hang":
            await self._released.wait()
        if answer.action == "raw":
            transport.write(answer.body)
            transport.close()
            return web.Response()
        if answer.action == "disconnect":
            transport.close()
            return web.Response()
        if answer.action == "truncate":
            response = web.StreamResponse(status=answer.status, headers=answer.headers)
            response.content_length = len(answer.body) + 1000
            await response.prepare(request)
            await response.write(answer.body)
            transport.close()
            return response
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    def session(self, *, trusted: bool = True) -> aiohttp.ClientSession:
        """A client session whose names resolve to this service; `trusted`: its certificate
        is trusted (else verified against the system's authorities, and refused)."""
        connector = aiohttp.TCPConnector(resolver=Resolver(self.routes),
                                         ssl=client_context() if trusted else True)
        return aiohttp.ClientSession(connector=connector)


@contextlib.asynccontextmanager
async def service() -> AsyncIterator[Service]:
    """A Service listening on 127.0.0.1, on one http and one https port."""
    svc = Service()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", svc.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    secure = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_server_context())
    await plain.start()
    await secure.start()
    svc.http_port, svc.https_port = (s._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                                     for s in (plain, secure))
    try:
        yield svc
    finally:
        svc._released.set()
        for sock in svc._sockets:
            sock.close()
        await runner.cleanup()

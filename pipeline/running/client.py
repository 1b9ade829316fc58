"""One request -> checked image bytes or a typed error. The only HTTP code.

The transport is provider-free: the client's provider (pipeline/providers/) builds the
request (URL, headers, body), reads a 200's body (the image as bytes, base64 or a URL to
download) and says what any other status means; the client sends, reads bounded bodies
(inflated under the same cap), keeps the key out of every message, sends it only to the
service's own origin, and checks the image (images.py) before it is kept. Anything that
lies is a RetryableApiError, so the runner, the retries and the pool treat every provider
alike.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit, urlunsplit

import aiohttp

from ..errors import ApiError, RetryableApiError, UnreachableError
from ..planning.config import DEFAULT_PORTS, REQUEST_TIMEOUT
from ..planning.plan import Job
from ..providers import default
from ..providers.base import Answer, Provider
from .images import GeneratedImage, check_image, decode_b64
from .retry import Stopped, parse_duration, parse_retry_after

__all__ = ["ApiClient", "GeneratedImage", "check_image", "decode_b64"]

#: Largest response body read (JSON or a downloaded image); a longer one is refused unread
#: past this point. The API's largest image (about one megapixel) is at worst a 4 MB PNG
#: (incompressible RGBA), 5.6 MB as base64 in JSON: 16 MB leaves room for that and more,
#: and keeps what one request can cost in memory (JSON, then base64 decoding, then the
#: image: about three times the body) small enough to multiply by --concurrency.
MAX_BODY_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT = 10.0  # seconds to establish a connection, within --timeout
#: Bodies are asked for uncompressed (and aiohttp's inflating is off, see _read): base64
#: images gain little from compression, and the size cap must count what is inflated.
PLAIN_BODY = {"Accept-Encoding": "identity"}
def _os_reason(error: OSError) -> str:
    """'Connection refused', 'Name or service not known': the system's words for an error."""
    if isinstance(error, ssl.SSLError):
        # Its errno is OpenSSL's (1), not the system's: strerror(1) would say "Operation not
        # permitted" for a certificate that does not verify.
        why = getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
        return f"TLS: {str(why).replace('_', ' ').lower()}"
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    return str(error.strerror or error or type(error).__name__)


def _escapes(text: str) -> set[str]:
    """`text` as a library may print it inside a quoted string: repr-escaped, escaped as
    text or as its UTF-8 bytes, with either quote character escaped or not."""
    escaped = {repr(text)[1:-1], text.encode("unicode_escape").decode("ascii"),
               text.encode("utf-8", "surrogatepass").decode("latin-1")
               .encode("unicode_escape").decode("ascii")}
    return escaped | {form.replace(q, "\\" + q) for form in escaped for q in "'\""}


def _scrub(text: str, *secrets: str | None) -> str:
    """`text` without any of `secrets` in any form a library may print it in: as is,
    escaped up to three times over, percent-encoded."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        # Errors quote what they quote: aiohttp's parser error shows a response line as
        # bytes (one escaping), the error's text repr()s that message (two), and the line
        # itself may be a server echoing the request's headers as a repr (three).
        escaped = {secret}
        for _ in range(3):
            escaped |= {form for each in escaped for form in _escapes(each)}
        forms |= escaped | {quote(secret, safe=""), quote_plus(secret, safe="")}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


class _Inflater:
    """gzip or deflate, inflated a piece at a time and never past the bound it is given."""

    def __init__(self, encoding: str) -> None:
        # 47: a gzip or zlib header, detected; HTTP's "deflate" is meant to be zlib, but
        # some servers send it raw, which the first piece tells apart.
        self._encoding = encoding
        self._z = zlib.decompressobj(47)
        self._started = False
        self.has_more = False  # input left that would inflate past the bound

    def inflate(self, data: bytes, bound: int) -> bytes:
        """At most `bound` bytes inflated from `data` (and what the last call held back);
        ValueError for a body that does not inflate."""
        try:
            out = self._z.decompress(self._z.unconsumed_tail + data, max(1, bound))
        except zlib.error:
            if self._started or self._encoding != "deflate":
                raise ValueError(f"{self._encoding} response body does not inflate") from None
            self._z = zlib.decompressobj(-15)  # raw deflate
            try:
                out = self._z.decompress(data, max(1, bound))
            except zlib.error:
                raise ValueError("deflate response body does not inflate") from None
        self._started = True
        self.has_more = bool(self._z.unconsumed_tail)
        return out

    @property
    def done(self) -> bool:
        """Whether the compressed stream ended properly."""
        return self._z.eof


class _Call:
    """One generate() call: the HTTP requests it has sent, who hears of each response, and
    who is told just before the image request goes out."""

    __slots__ = ("observe", "requests", "sending")

    def __init__(self, observe: Callable[[Mapping[str, str], int], None] | None,
                 sending: Callable[[], None] | None = None) -> None:
        self.observe = observe
        self.requests = 0
        self.sending = sending


class ApiClient:
    """Sends one generation request per call over a shared session; raises typed ApiErrors."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        key: str,
        *,
        timeout: float = REQUEST_TIMEOUT,
        key_variable: str = "DIFFUSION_KEY",
        max_body: int = MAX_BODY_BYTES,
        provider: Provider | None = None,
        accept: str = "image/*",
    ) -> None:
        self._session = session
        parts = urlsplit(base_url)
        if "@" in parts.netloc:
            # user:password in the URL: the service authenticates by the bearer key alone, and
            # with them aiohttp refuses to send our Authorization header at all (ValueError).
            # They are never sent nor shown (backend_name() drops them too).
            base_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.provider: Provider = provider or default()
        self._base = base_url.rstrip("/")
        self._endpoint = self._base + self.provider.endpoint
        # What a provider answering with the image's bytes or JSON is asked for.
        self._accept = accept
        self._key = key
        # A host that drops packets would otherwise cost the whole --timeout per attempt
        # before the run can tell it is unreachable.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, CONNECT_TIMEOUT))
        self._key_variable = key_variable
        self._max_body = max_body
        self.requests = 0  # HTTP requests sent, retries and URL downloads included

    def __repr__(self) -> str:
        return f"ApiClient({self._endpoint!r})"

    def _sent(self, call: _Call) -> None:
        if call.requests == 0 and call.sending is not None:
            # A call's first request is its image request, the one a budget counts: the
            # caller may still hold it back here (raising Stopped), once everything before
            # it (an input image read and checked) is done.
            call.sending()
        self.requests += 1
        call.requests += 1

    def _unsent(self, call: _Call) -> None:
        """The request just counted never reached the wire: its connection was refused or
        never made, so nothing was sent (or billed)."""
        self.requests -= 1
        call.requests -= 1

    async def generate(
        self, job: Job, observe: Callable[[Mapping[str, str], int], None] | None = None,
        sending: Callable[[], None] | None = None,
    ) -> GeneratedImage:
        """Send `job.body` as is; the checked image, or an ApiError subclass. Either carries
        the HTTP requests the call sent (a request whose connection could not be made is not
        one); `observe` hears each response's headers and status as soon as they arrive;
        `sending` is called just before the image request goes out (not when the call fails
        before it), and what it raises (Stopped) is raised as is, with nothing sent."""
        call = _Call(observe, sending)
        try:
            return await self._generate(job.for_provider(self.provider), call)
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an ApiError
            # Raised without a local name: a local holding the error would tie it to its own
            # traceback, keeping the failed body's buffers alive until a garbage collection.
            raise self._api_error(exc, call) from None

    def _api_error(self, exc: Exception, call: _Call) -> ApiError:
        """`exc` as the ApiError the runner acts on (with the requests its call sent), the key
        scrubbed from its text."""
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            self._unsent(call)
        error = self._as_api_error(exc)
        error.requests = call.requests
        return error

    def _as_api_error(self, exc: Exception) -> ApiError:
        if isinstance(exc, ApiError):
            exc.message = _scrub(exc.message, *self.provider.secrets(self._key))
            exc.args = (exc.message,)
            return exc
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            # No connection within CONNECT_TIMEOUT: as unreachable as a refused one.
            host = urlsplit(self._endpoint).netloc
            return UnreachableError(
                f"cannot connect to {host} (no answer within {self._timeout.sock_connect:g} s)")
        if isinstance(exc, asyncio.TimeoutError):
            return RetryableApiError(
                f"no complete response within {self._timeout.total:g} s", kind="timeout")
        if isinstance(exc, aiohttp.ClientConnectorError):
            # No connection at all (refused, a name that does not resolve, TLS refused): the
            # runner stops the run when this is all the service ever says (a wrong URL).
            return UnreachableError(
                f"cannot connect to {exc.host}:{exc.port} ({_os_reason(exc.os_error)})")
        text = _scrub(f"{type(exc).__name__}: {exc}", *self.provider.secrets(self._key))
        if isinstance(exc, aiohttp.ClientError):
            return RetryableApiError(f"connection failed ({text})", kind="connection")
        # Anything else (a library refusing the request, a bug) fails this job with its
        # reason, so that no job can end without a record of why.
        return ApiError(f"unexpected error ({text})", kind="internal")

    async def _generate(self, job: Job, call: _Call) -> GeneratedImage:
        provider = self.provider
        # Off the loop only when building the request reads a file or the credential chain
        # (an input image, a signature): a thread hop costs more than a JSON body, and with
        # dozens of requests in flight the client's CPU per job is what limits throughput.
        if provider.request_blocks(job, self._key):
            out = await asyncio.to_thread(provider.request, job, self._base, self._key,
                                          self._accept)
        else:
            out = provider.request(job, self._base, self._key, self._accept)
        headers = {**out.headers, **PLAIN_BODY}
        self._sent(call)
        async with self._session.post(
            out.url, data=out.body, headers=headers, timeout=self._timeout,
            auto_decompress=False,
        ) as resp:
            if call.observe is not None:
                call.observe(provider.pacing_headers(resp.headers, resp.status), resp.status)
            raw = await self._read(resp)
            status, ctype, resp_headers = resp.status, resp.content_type or "", resp.headers
        if status != 200:
            raise self._status_error(status, raw, resp_headers)
        request = job.request
        # the answer read and its image decoded and checked in one trip off the loop
        answer, image = await asyncio.to_thread(_read_answer, provider, raw, ctype,
                                                resp_headers, request)
        del raw  # the body can be several MB; do not keep it past reading
        if image is None:
            assert answer.url is not None
            image = await self._download(urljoin(self._endpoint, answer.url), request, call)
        return GeneratedImage(image.data, image.format, image.width, image.height,
                              answer.created, requests=call.requests, seed=answer.seed,
                              flag=image.flag)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise RetryableApiError(
                f"response is {encoding[:20]}-encoded although none was asked for",
                status=resp.status, kind="format",
            )
        # Asked for identity, but a server or proxy that compresses anyway is inflated here,
        # a piece at a time, so the cap counts inflated bytes as they come (a small gzip body
        # can inflate to gigabytes).
        inflater = _Inflater(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None
        length = resp.content_length
        if inflater is None and length is not None and length > self._max_body:
            raise RetryableApiError(
                f"response body of {length} bytes is over the {self._max_body} byte cap",
                status=resp.status, kind="too_large",
            )
        chunks, size = [], 0
        async for raw in resp.content.iter_chunked(256 * 1024):
            try:
                chunk = raw if inflater is None else inflater.inflate(
                    raw, self._max_body - size + 1)
            except ValueError as exc:
                if resp.status != 200:
                    return b""  # the status says what happened; its message is lost, no more
                raise RetryableApiError(str(exc), status=resp.status, kind="format") from None
            size += len(chunk)
            if size > self._max_body or (inflater is not None and inflater.has_more):
                raise RetryableApiError(
                    f"response body is over the {self._max_body} byte cap",
                    status=resp.status, kind="too_large",
                )
            chunks.append(chunk)
        if inflater is not None and not inflater.done and resp.status == 200:
            raise RetryableApiError(f"{encoding} response body is truncated",
                                    status=resp.status, kind="format")
        return b"".join(chunks)

    async def _download(self, url: str, request: dict[str, Any], call: _Call) -> GeneratedImage:
        if urlsplit(url).scheme not in ("http", "https"):
            raise RetryableApiError("unexpected response format (image url is not http)",
                                    kind="format")
        self._sent(call)
        # The key goes only to the service's own origin (scheme, host and port): never to a
        # third-party image host, nor in clear text over http to the service's own host.
        headers = dict(PLAIN_BODY)
        if _origin(url) == _origin(self._endpoint):
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout,
                                         auto_decompress=False) as resp:
                raw = await self._read(resp)
                if resp.status != 200:
                    raise RetryableApiError(f"image download answered {resp.status}",
                                            status=resp.status, kind="download")
        except aiohttp.ClientConnectorError as exc:
            # The service answered; only its image host did not. This job's failure, retried,
            # not the "wrong URL" that stops a run.
            self._unsent(call)
            raise RetryableApiError(
                f"image download: cannot connect to {exc.host}:{exc.port} "
                f"({_os_reason(exc.os_error)})", kind="download") from None
        return await asyncio.to_thread(check_image, raw, request, self.provider)

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> ApiError:
        """What the provider says a non-200 status means, with the pause the headers ask
        for (Retry-After, or on a 429 the rate limit's reset)."""
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if retry_after is None and status == 429:
            retry_after = parse_duration(headers.get("x-ratelimit-reset-requests"))
        return self.provider.status_error(status, raw, headers, self._key_variable,
                                          retry_after)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _read_answer(provider: Provider, raw: bytes, content_type: str,
                 headers: Mapping[str, str], request: dict[str, Any],
                 ) -> tuple[Answer, GeneratedImage | None]:
    """A 200's answer and its image checked (None when the answer is a URL to fetch)."""
    answer = provider.answer(raw, content_type, headers)
    if answer.data is not None:
        return answer, check_image(answer.data, request, provider)
    if answer.b64 is not None:
        return answer, check_image(decode_b64(answer.b64), request, provider)
    return answer, None

"""One request -> checked image bytes or a typed error. The only HTTP code.

Every response is checked before it is kept: JSON parsed, base64 decoded strictly (or the
URL downloaded), the bytes opened with Pillow under a pixel limit, integrity checked, and
format and size compared with the request. Anything that lies is a RetryableApiError.

Two providers, one client: `heroku` (JSON in, `data[0].b64_json` out) and `stability`
(Stability AI's own API: a multipart form in, the image's bytes out with `finish-reason`
and `seed` headers, or JSON when the server prefers it). Their answers are made into the
same typed errors, so the runner, the retries and the pool treat both alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import os
import ssl
import struct
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict
from PIL import Image, UnidentifiedImageError

from .. import version
from ..errors import (
    ApiError,
    AuthError,
    PermanentApiError,
    RetryableApiError,
    UnreachableError,
    printable,
)
from ..planning import apispec, stabilityform
from ..planning.config import DEFAULT_PORTS, REQUEST_TIMEOUT
from ..planning.plan import Job
from .retry import Stopped, parse_duration, parse_retry_after

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
#: Twice the largest API size: anything declaring more is refused before decoding.
MAX_PIXELS = 2 * max(w * h for w, h in (map(int, s.split("x")) for s in apispec.SIZES))
PERMANENT_STATUSES = frozenset({400, 403, 404, 405, 410, 413, 414, 415, 422})
RETRYABLE_4XX = frozenset({408, 409, 425, 429})

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
#: How far (relative) a Stability image's aspect may be from the ratio asked: its sizes are
#: "about one megapixel" at the ratio, not a documented table like Heroku's.
ASPECT_TOLERANCE = 0.03
#: Pixel counts of an image the model could have chosen to make: about one megapixel, as all
#: its sizes are (two thirds of the smallest to half again the largest). An image of another
#: size than asked but in this range is the provider's answer, which the same request and seed
#: would get again: it is kept and flagged, not retried (a retry would pay for it twice). Far
#: outside it (a thumbnail, a placeholder) it is a body that lies, and retried.
_API_PIXELS = sorted(w * h for w, h in (map(int, s.split("x")) for s in apispec.SIZES))
PLAUSIBLE_PIXELS = (_API_PIXELS[0] * 2 // 3, _API_PIXELS[-1] * 3 // 2)
#: Stability's finish-reason for an image its moderation withheld (still a 200).
CONTENT_FILTERED = "CONTENT_FILTERED"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every PNG
#: Sent on every Stability request: Stability asks clients to name themselves and their
#: version so that it can reach their users about moderation (its API's optional headers).
STABILITY_CLIENT_HEADERS = {"stability-client-id": "imagebatch",
                            "stability-client-version": version()}


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One checked image as served: the encoded bytes, its format and size, `created`, and
    the HTTP requests it took (a url-format answer costs a download beside the POST)."""

    data: bytes
    format: str  # png | jpeg
    width: int
    height: int
    created: int | None = None
    requests: int = 1
    seed: int | None = None  # the seed the provider says it used (Stability's `seed` header)
    # What is off about a kept image: another size than asked, within PLAUSIBLE_PIXELS
    flag: str | None = None


def _size_problem(w: int, h: int, request: Mapping[str, Any]) -> str | None:
    """Why a w x h image does not fit `request`, or None.

    Heroku's sizes are exact (api.md's table). Stability's are checked by shape: the ratio
    asked within ASPECT_TOLERANCE; an image-to-image answer keeps its input's shape, so
    only its pixel limit applies.
    """
    if request.get("provider") != apispec.STABILITY:
        want = apispec.pixel_size(dict(request))
        return None if (w, h) == want else f"image is {w}x{h}, asked for {want[0]}x{want[1]}"
    if request.get("image"):
        return None
    ratio = str(request.get("aspect_ratio") or apispec.DEFAULT_ASPECT)
    rw, rh = (int(x) for x in ratio.split(":"))
    if abs((w / h) / (rw / rh) - 1) > ASPECT_TOLERANCE:
        return f"image is {w}x{h}, not the {ratio} asked for"
    return None


def check_image(data: bytes, request: Mapping[str, Any]) -> GeneratedImage:
    """Open `data` under a pixel limit, check integrity, format and size against `request`."""
    want_fmt = apispec.image_format(dict(request))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))
        with img:
            fmt = _PIL_FORMATS.get(img.format or "", "")
            w, h = img.size
            # Declared size first: a bomb is refused before a single pixel is decoded.
            if w * h > MAX_PIXELS:
                raise RetryableApiError(f"image declares {w}x{h} pixels: refused", kind="bad_image")
            if fmt != want_fmt:
                raise RetryableApiError(
                    f"image is {img.format}, asked for {want_fmt}", kind="wrong_format"
                )
            wrong = _size_problem(w, h, request)
            if wrong and not PLAUSIBLE_PIXELS[0] <= w * h <= PLAUSIBLE_PIXELS[1]:
                raise RetryableApiError(wrong, kind="wrong_size")
            if fmt == "webp":
                img.load()  # every chunk decoded: a truncated WebP fails here
            elif fmt == "png":
                img.verify()  # walks every chunk to IEND checking CRCs; no pixel decoding
                # Bytes after IEND are not part of the image (decoders ignore them) but would
                # be saved with it: a server padding an image with megabytes of something else
                # must not get them written under outputs.
                end = data.find(_PNG_IEND)
                if end < 0:
                    raise RetryableApiError("PNG does not end with an IEND chunk", kind="truncated")
                extra = len(data) - end - len(_PNG_IEND)
                if extra:
                    raise RetryableApiError(f"{extra} bytes after the end of the PNG",
                                            kind="trailing")
            else:
                if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    raise RetryableApiError("JPEG is truncated (no end marker)", kind="truncated")
                # Decode at 1/8 scale: every entropy-coded byte is read, little IDCT work.
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except RetryableApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise RetryableApiError(f"image refused: {exc}", kind="bad_image") from None
    except UnidentifiedImageError:
        raise RetryableApiError("response bytes are not a PNG, JPEG or WebP image",
                                kind="not_image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise RetryableApiError(f"image is corrupt or truncated ({exc})",
                                kind="truncated") from None
    return GeneratedImage(data=data, format=fmt, width=w, height=h, flag=wrong)


def _error_message(raw: bytes) -> str | None:
    """The server's `error.message` (or `message` / `detail`), one printable line, if any."""
    found = _error_field(raw)
    return printable(" ".join(found.split()))[:500] if found else None


def _error_field(raw: bytes) -> str | None:
    try:
        doc = json.loads(raw[:65536])
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        # Stability's shape: {"id", "name", "errors": ["...", ...]}
        said = [e for e in doc["errors"] if isinstance(e, str)][:10]
        name = doc.get("name") if isinstance(doc.get("name"), str) else None
        text = "; ".join(said)
        if name and text:
            return f"{name}: {text}"[:2000]
        if text or name:
            return (text or name or "")[:2000]
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(message := err.get("message"), str):
            return message[:2000]
        if isinstance(err, str):
            return err[:2000]
        for name in ("message", "detail"):
            if isinstance(value := doc.get(name), str):
                return value[:2000]
    return None


def parse_body(raw: bytes, content_type: str) -> tuple[str | None, str | None, int | None]:
    """(b64_json, url, created) from a 200 body; raises RetryableApiError for bodies that lie."""
    head = raw[:64].lstrip().lower()
    if "html" in content_type or head.startswith((b"<!doctype", b"<html", b"<")):
        raise RetryableApiError("an HTML page came back instead of JSON", status=200, kind="html")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[... a million deep
        raise RetryableApiError("response is not valid JSON", status=200, kind="bad_json") from None
    item = None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list) and doc["data"]:
        item = doc["data"][0]
    created = doc.get("created") if isinstance(doc, dict) else None
    created = created if isinstance(created, int) and not isinstance(created, bool) else None
    if isinstance(item, dict):
        b64 = item.get("b64_json")
        if isinstance(b64, str) and b64:
            return b64, None, created
        url = item.get("url")
        if isinstance(url, str) and url:
            return None, url, created
    raise RetryableApiError("unexpected response format", status=200, kind="format")


def decode_b64(text: str) -> bytes:
    """base64 bytes; RetryableApiError when it does not decode.

    Strict RFC 4648 first (what the API sends). Failing that, the harmless variants other
    servers send are accepted: line breaks (MIME), missing padding, the URL-safe alphabet,
    a `data:image/...;base64,` prefix. Any other character still fails; what decodes is
    checked as an image afterwards either way.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    head, comma, _rest = text[:100].partition(",")
    if comma and head.strip().startswith("data:") and head.endswith(";base64"):
        text = text[len(head) + 1:]
    text = "".join(text.split()).translate(_URLSAFE).rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RetryableApiError("base64 image data does not decode", kind="bad_base64") from None


_URLSAFE = str.maketrans("-_", "+/")


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


def _scrub(text: str, secret: str | None) -> str:
    """`text` without `secret` in any form a library may print it in: as is, repr-escaped,
    percent-encoded."""
    if not secret or len(secret) < 4:
        return text
    forms = {secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii"),
             quote(secret, safe=""), quote_plus(secret, safe="")}
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
        provider: str = apispec.HEROKU,
        accept: str = "image/*",
    ) -> None:
        self._session = session
        parts = urlsplit(base_url)
        if "@" in parts.netloc:
            # user:password in the URL: the service authenticates by the bearer key alone, and
            # with them aiohttp refuses to send our Authorization header at all (ValueError).
            # They are never sent nor shown (backend_name() drops them too).
            base_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.provider = provider
        self._endpoint = base_url.rstrip("/") + apispec.endpoint(provider)
        # Stability answers with the image's bytes (image/*) or JSON (application/json).
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
            job = job.for_provider(self.provider)
            if self.provider == apispec.STABILITY:
                return await self._generate_stability(job, call)
            return await self._generate(job, call)
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
            exc.message = _scrub(exc.message, self._key)
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
        text = _scrub(f"{type(exc).__name__}: {exc}", self._key)
        if isinstance(exc, aiohttp.ClientError):
            return RetryableApiError(f"connection failed ({text})", kind="connection")
        # Anything else (a library refusing the request, a bug) fails this job with its
        # reason, so that no job can end without a record of why.
        return ApiError(f"unexpected error ({text})", kind="internal")

    async def _generate(self, job: Job, call: _Call) -> GeneratedImage:
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json",
                   **PLAIN_BODY}
        self._sent(call)
        async with self._session.post(
            self._endpoint, data=job.body.encode("utf-8"), headers=headers, timeout=self._timeout,
            auto_decompress=False,
        ) as resp:
            if call.observe is not None:
                call.observe(resp.headers, resp.status)
            raw = await self._read(resp)
            status, ctype, resp_headers = resp.status, resp.content_type or "", resp.headers
        if status != 200:
            raise self._status_error(status, raw, resp_headers)
        b64, url, created = await asyncio.to_thread(parse_body, raw, ctype)
        del raw  # the JSON text can be several MB; do not keep it past decoding
        if b64 is not None:
            image = await asyncio.to_thread(_decode_and_check, b64, job.request)
        else:
            assert url is not None
            image = await self._download(urljoin(self._endpoint, url), job.request, call)
        return GeneratedImage(image.data, image.format, image.width, image.height, created,
                              requests=call.requests, flag=image.flag)

    async def _generate_stability(self, job: Job, call: _Call) -> GeneratedImage:
        request = job.request
        form, form_type = await asyncio.to_thread(stability_form, job)
        headers = {"Authorization": f"Bearer {self._key}", "Accept": self._accept,
                   "Content-Type": form_type, **STABILITY_CLIENT_HEADERS, **PLAIN_BODY}
        self._sent(call)
        async with self._session.post(
            self._endpoint, data=form, headers=headers, timeout=self._timeout,
            auto_decompress=False,
        ) as resp:
            if call.observe is not None:
                call.observe(_with_lockout(resp.headers, resp.status), resp.status)
            raw = await self._read(resp)
            status, ctype, resp_headers = resp.status, resp.content_type or "", resp.headers
        if status != 200:
            raise self._status_error(status, raw, resp_headers)
        if "json" in ctype:
            b64, reason, seed = await asyncio.to_thread(parse_stability_json, raw)
            del raw
            _check_finish(reason)
            image = await asyncio.to_thread(_decode_and_check, b64, request)
        else:
            _check_finish(resp_headers.get("finish-reason"))
            seed = _seed_header(resp_headers.get("seed"))
            if "html" in ctype:
                raise RetryableApiError("an HTML page came back instead of an image",
                                        status=200, kind="html")
            image = await asyncio.to_thread(check_image, raw, request)
            del raw
        return GeneratedImage(image.data, image.format, image.width, image.height, None,
                              requests=call.requests, seed=seed, flag=image.flag)

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
        return await asyncio.to_thread(check_image, raw, request)

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> ApiError:
        message = _error_message(raw)
        said = f": {message}" if message else ""
        if status == 401:
            return AuthError(
                f"the service rejected the key (401{said}): check {self._key_variable}",
                status=status, kind="auth",
            )
        if status == 402:
            # Stability's payment_required: the key's account is out of credits. Like a 401
            # it is the key's problem, not the job's: every other job would get it too.
            return AuthError(
                f"the service refused the key: its account is out of credits (402{said}): "
                f"add credits, or check {self._key_variable}", status=status, kind="payment",
            )
        if status in PERMANENT_STATUSES or (400 <= status < 500 and status not in RETRYABLE_4XX):
            kind = "permanent"
            if self.provider == apispec.STABILITY and status == 403:
                # Stability's 403 is its moderation flagging the prompt (content_moderation),
                # not a refused key: this job fails, the member stays.
                kind = "moderation"
            return PermanentApiError(message or f"HTTP {status}", status=status, kind=kind)
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if retry_after is None and status == 429:
            retry_after = parse_duration(headers.get("x-ratelimit-reset-requests"))
        if retry_after is None and status == 429 and self.provider == apispec.STABILITY:
            retry_after = apispec.STABILITY_LOCKOUT  # its 429 is a 60 s lockout
        return RetryableApiError(
            f"HTTP {status}{said}", status=status, kind="http", retry_after=retry_after
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _decode_and_check(b64: str, request: dict[str, Any]) -> GeneratedImage:
    return check_image(decode_b64(b64), request)


# -- Stability ---------------------------------------------------------------------------

def stability_form(job: Job) -> tuple[bytes, str]:
    """The multipart/form-data body of a Stability request (always multipart, file or not)
    and its Content-Type: stabilityform.encode's bytes, the very body planning measured.

    An input image is read now and checked against the SHA-256 its key was made from (a
    file changed since planning would make an image under the wrong key: refused). A body
    over Stability's 10 MiB is refused unsent (planning refuses it first; this is for jobs
    that did not come through it).
    """
    request = job.request
    image: bytes | None = None
    if request.get("image"):
        if job.image is None:
            raise PermanentApiError("image-to-image job without its input image file",
                                    kind="input_image")
        try:
            with open(job.image, "rb") as fh:
                # a file that cannot fit is not read whole to find out
                size = os.fstat(fh.fileno()).st_size
                if size > apispec.STABILITY_MAX_REQUEST_BYTES:
                    raise _too_large(f"the input image {job.image} is {size:,} bytes")
                image = fh.read()
        except OSError as exc:
            raise PermanentApiError(f"cannot read the input image {job.image}: "
                                    f"{exc.strerror or exc}", kind="input_image") from None
        if "sha256:" + hashlib.sha256(image).hexdigest() != request["image"]:
            raise PermanentApiError(f"the input image {job.image} changed since the plan was "
                                    "made; run again to plan it anew", kind="input_image")
    boundary = stabilityform.new_boundary()
    body = stabilityform.encode(request, boundary, image,
                                os.path.basename(job.image) if job.image else "image")
    if len(body) > apispec.STABILITY_MAX_REQUEST_BYTES:
        raise _too_large(f"the request is {len(body):,} bytes")
    return body, stabilityform.content_type(boundary)


def _too_large(what: str) -> PermanentApiError:
    return PermanentApiError(
        f"{what}, over the {apispec.STABILITY_MAX_REQUEST_BYTES:,} (10 MiB) a Stability "
        f"request may be: shrink the input image ({stabilityform.SHRINK}); nothing was sent",
        kind="too_large")


def _with_lockout(headers: Mapping[str, str], status: int) -> Mapping[str, str]:
    """A Stability 429's headers for the pacer: without a Retry-After of its own, the 60 s
    lockout its documentation promises (a request sooner would only extend it)."""
    if status != 429 or headers.get("Retry-After") is not None:
        return headers
    out = CIMultiDict(headers)  # header names stay case-insensitive, as the pacer reads them
    out["Retry-After"] = f"{apispec.STABILITY_LOCKOUT:g}"
    return out


def _check_finish(reason: str | None) -> None:
    """A 200 whose finish reason is not SUCCESS: CONTENT_FILTERED fails the job for good
    (the same request would be filtered again; no image is saved), another is retried."""
    if reason is None or reason.strip().upper() in ("", "SUCCESS"):
        return
    if reason.strip().upper() == CONTENT_FILTERED:
        raise PermanentApiError(
            "content filtered: the provider's moderation withheld this image "
            "(finish-reason CONTENT_FILTERED); change the prompt, or the seed",
            status=200, kind="content_filtered")
    raise RetryableApiError(f"finish-reason {printable(reason)[:40]}", status=200,
                            kind="finish_reason")


def _seed_header(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value <= apispec.MAX_SEED else None


def parse_stability_json(raw: bytes) -> tuple[str, str | None, int | None]:
    """(base64 image, finish_reason, seed) from a Stability JSON answer; RetryableApiError
    for one that lies."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RetryableApiError("response is not valid JSON", status=200, kind="bad_json") from None
    if not isinstance(doc, dict):
        raise RetryableApiError("unexpected response format", status=200, kind="format")
    reason = doc.get("finish_reason")
    reason = reason if isinstance(reason, str) else None
    seed = doc.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    image = doc.get("image")
    if reason is not None and reason.upper() == CONTENT_FILTERED:
        _check_finish(reason)
    if not isinstance(image, str) or not image:
        raise RetryableApiError("unexpected response format (no image)", status=200,
                                kind="format")
    return image, reason, seed

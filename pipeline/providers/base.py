"""The one interface every provider implements: how it is chosen from the environment, the
request it sends, how its answer is read, what each status means, and its pace.

A provider is one module of this folder subclassing `Provider` (see docs/development.md,
"Adding a provider"). The transport (`running/client.py`: bounded reads, inflation limits,
key scrubbing, origin checks, timeouts) is shared and provider-free: it asks the provider
for the request to send and hands it the answer to read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    ApiError,
    AuthError,
    PermanentApiError,
    RetryableApiError,
    printable,
)
from ..planning import apispec
from ..planning.plan import Job

#: Statuses that fail the job for good (the same request would get them again).
PERMANENT_STATUSES = frozenset({400, 403, 404, 405, 410, 413, 414, 415, 422})
#: 4xx statuses worth a retry (a timeout, a conflict, too early, too many).
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One request as the transport sends it: the URL, the body, and the headers (the key's
    header included: never printed)."""

    url: str
    body: bytes
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a 200 carried: the image as bytes, as base64 or as a URL to download (one of
    them), with what the provider says of it."""

    data: bytes | None = None
    b64: str | None = None
    url: str | None = None
    created: int | None = None
    seed: int | None = None  # the seed the provider says it used, when it says


class Provider:
    """A provider of the model: its facts and its request and answer shapes.

    Subclasses set the class attributes and override what differs; the defaults are the
    API of api.md (JSON in, the image as base64 JSON out).
    """

    #: `{PREFIX}_PROVIDER`'s value naming it.
    name: str = ""
    #: The manifest request fields it takes.
    fields: frozenset[str] = frozenset(apispec.REQUEST_FIELDS)
    #: The output formats it makes.
    output_formats: tuple[str, ...] = apispec.OUTPUT_FORMATS
    #: The largest seed it takes.
    max_seed: int = apispec.MAX_SEED
    #: The path of its generation requests below the base URL (as messages show it).
    endpoint: str = apispec.ENDPOINT
    #: Tails a user may have copied with the base URL, cut off it (longest first).
    url_tails: tuple[str, ...] = ()
    #: Hosts (and their subdomains) whose URL means this provider, without `{PREFIX}_PROVIDER`.
    hosts: tuple[str, ...] = ()
    #: Variables read for the key when `{PREFIX}_KEY` is not set, in order.
    key_variables: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<provider {self.name}>"

    # -- the environment ------------------------------------------------------------------

    def claims_url(self, url: str) -> bool:
        """Whether a URL on this host means this provider."""
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            return False
        return any(host == h or host.endswith("." + h) for h in self.hosts)

    def implied(self, env: Mapping[str, str], prefix: str) -> bool:
        """Whether the environment names this provider for `prefix` with none of the
        prefix's own variables set (e.g. Stability's key alone)."""
        return False

    def key_of(self, env: Mapping[str, str], prefix: str) -> tuple[str, str | None]:
        """(the prefix's key, the variable it came from when not {prefix}_KEY): ("", None)
        when there is none."""
        key = (env.get(f"{prefix}_KEY") or "").strip()
        if key:
            return key, None
        for name in self.key_variables:
            value = (env.get(name) or "").strip()
            if value:
                return value, name
        return "", None

    def needs_key(self, env: Mapping[str, str], prefix: str) -> bool:
        """Whether a remote URL is unusable without a key from `key_of`."""
        return True

    def default_url(self, env: Mapping[str, str], prefix: str, key: str) -> str:
        """The base URL used when `{prefix}_URL` is not set ("": the embedded server)."""
        return ""

    def how_key(self, prefix: str) -> str:
        """How a user sets the key, for error messages."""
        return f"export {prefix}_KEY=$(heroku config:get -a APP {prefix}_KEY)"

    def how_url(self, prefix: str) -> str:
        """How a user sets the URL, for error messages."""
        return f"export {prefix}_URL=$(heroku config:get -a APP {prefix}_URL)"

    def check_model(self, prefix: str, model: str) -> None:
        """ConfigError for a `{prefix}_MODEL_ID` this provider cannot serve."""

    def note(self, prefix: str, url: str, key_name: str | None) -> str:
        """A note said before a run when its service was implied rather than named, or ""."""
        return ""

    # -- the request ----------------------------------------------------------------------

    def key_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The body a job's key is the hash of: the JSON body sent, by default."""
        return request

    def oversize(self, request: dict[str, Any], image_size: int | None, filename: str,
                 image_format: str) -> str | None:
        """Why a request is too large to send, or None: no limit of its own by default."""
        return None

    def request_blocks(self, job: Job, key: str) -> bool:
        """Whether `request` reads a file or the network for `job` (an input image, a
        credential chain): the client then builds it off the event loop."""
        return job.image is not None

    def request(self, job: Job, base_url: str, key: str, accept: str) -> Outgoing:
        """The request of `job` (already this provider's variant) to the service at
        `base_url`: JSON to the endpoint, the key as a bearer token."""
        return Outgoing(base_url + self.endpoint, job.body.encode("utf-8"),
                        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})

    def secrets(self, key: str) -> tuple[str, ...]:
        """Every secret a request may carry, to scrub from error text: the key by default."""
        return (key,) if key else ()

    # -- the answer -----------------------------------------------------------------------

    def answer(self, raw: bytes, content_type: str, headers: Mapping[str, str]) -> Answer:
        """A 200's body read: `data[0].b64_json` or `data[0].url`, and `created`;
        RetryableApiError for a body that lies."""
        head = raw[:64].lstrip().lower()
        if "html" in content_type or head.startswith((b"<!doctype", b"<html", b"<")):
            raise RetryableApiError("an HTML page came back instead of JSON", status=200,
                                    kind="html")
        doc = json_doc(raw)
        item = None
        if isinstance(doc, dict) and isinstance(doc.get("data"), list) and doc["data"]:
            item = doc["data"][0]
        created = doc.get("created") if isinstance(doc, dict) else None
        created = created if isinstance(created, int) and not isinstance(created, bool) else None
        if isinstance(item, dict):
            b64 = item.get("b64_json")
            if isinstance(b64, str) and b64:
                return Answer(b64=b64, created=created)
            url = item.get("url")
            if isinstance(url, str) and url:
                return Answer(url=url, created=created)
        raise RetryableApiError("unexpected response format", status=200, kind="format")

    def size_problem(self, width: int, height: int, request: Mapping[str, Any]) -> str | None:
        """Why a width x height image does not fit `request`, or None: exact sizes (api.md's
        table) by default."""
        want = apispec.pixel_size(dict(request))
        if (width, height) == want:
            return None
        return f"image is {width}x{height}, asked for {want[0]}x{want[1]}"

    # -- statuses -------------------------------------------------------------------------

    def pacing_headers(self, headers: Mapping[str, str], status: int) -> Mapping[str, str]:
        """The headers the pacer reads from an answer: as they came, by default."""
        return headers

    def error_message(self, raw: bytes, headers: Mapping[str, str]) -> str | None:
        """The server's message in an error body, one printable line, if any."""
        found = error_field(raw)
        return printable(" ".join(found.split()))[:500] if found else None

    def status_error(self, status: int, raw: bytes, headers: Mapping[str, str],
                     key_variable: str, retry_after: float | None) -> ApiError:
        """What a non-200 status means: the key's problem (AuthError: the run stops, a pool
        drops the member), the job's for good (PermanentApiError), or worth a retry
        (RetryableApiError, pausing `retry_after`: the transport's reading of Retry-After,
        or of the rate-limit reset on a 429)."""
        message = self.error_message(raw, headers)
        said = f": {message}" if message else ""
        if status == 401:
            return AuthError(f"the service rejected the key (401{said}): check {key_variable}",
                             status=status, kind="auth")
        if status in PERMANENT_STATUSES or (400 <= status < 500 and status not in RETRYABLE_4XX):
            return PermanentApiError(message or f"HTTP {status}", status=status,
                                     kind="permanent")
        return RetryableApiError(f"HTTP {status}{said}", status=status, kind="http",
                                 retry_after=retry_after)

    # -- pacing ---------------------------------------------------------------------------

    def pace(self, asked: float | None, default: float | None, auto: bool,
             local: bool) -> tuple[float | None, bool]:
        """(rpm, auto_rpm) for one member's Pacer: `default`/`auto` as the run chose them
        (paced from the service's rate-limit headers), by default."""
        return default or None, auto


def json_doc(raw: bytes) -> Any:
    """A 200's JSON; RetryableApiError when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[... a million deep
        raise RetryableApiError("response is not valid JSON", status=200,
                                kind="bad_json") from None


def error_field(raw: bytes) -> str | None:
    """The message of an error body: `error.message`, `error`, `message` or `detail`."""
    try:
        doc = json.loads(raw[:65536])
    except (ValueError, RecursionError):
        return None
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


def seed_of(value: Any, highest: int = apispec.MAX_SEED) -> int | None:
    """A seed the provider says it used (a number or its text), or None."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= highest:
        return value
    return None


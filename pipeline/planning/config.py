"""Settings from the environment: `{PREFIX}_URL`, `{PREFIX}_KEY`, `{PREFIX}_MODEL_ID`,
`{PREFIX}_PROVIDER`.

The prefix is the alias chosen when the model was attached (`--as DIFFUSION`), changeable
with `--env-prefix`. The key is kept out of every repr and message.

Each prefix names one provider (`heroku`, the default, or `stability`): `{PREFIX}_PROVIDER`
when set; else `stability` for a URL on stability.ai; else `stability` when the prefix is
DIFFUSION or STABILITY, none of its own variables is set and `STABILITY_API_KEY` is (the
Stability API at its public base URL, with that key); else `heroku`. A Stability prefix
without a URL goes to the public base URL once it has a key (`{PREFIX}_KEY`, else
`STABILITY_API_KEY`), and to the embedded server without one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError
from .apispec import (
    DEFAULT_MODEL,
    HEROKU,
    PROVIDERS,
    STABILITY,
    STABILITY_BASE_URL,
    STABILITY_ENDPOINT,
)

DEFAULT_PREFIX = "DIFFUSION"
STABILITY_PREFIX = "STABILITY"
#: Stability AI's own name for its key, read for a Stability prefix without a key of its own.
STABILITY_KEY_VARIABLE = "STABILITY_API_KEY"
REQUEST_TIMEOUT = 120.0  # seconds per request, whole response included (--timeout)
LOCAL_BACKEND = "local"  # the backend name of the embedded server, whatever its port
DEFAULT_PORTS = {"http": 80, "https": 443}
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# What a bearer token can hold (RFC 6750's token68 and then some): printable ASCII, no space.
_KEY = re.compile(r"[\x21-\x7e]+\Z")


def check_prefix(prefix: str) -> str:
    """The prefix itself when it can name environment variables; else ConfigError."""
    if not _PREFIX.match(prefix or ""):
        raise ConfigError(f"--env-prefix {prefix!r}: use letters, digits and _ (e.g. DIFFUSION)")
    return prefix


def default_model(env: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """`{PREFIX}_MODEL_ID` when set and not blank, else stable-image-ultra."""
    return (env.get(f"{prefix}_MODEL_ID") or "").strip() or DEFAULT_MODEL


@dataclass(frozen=True, slots=True)
class Connection:
    """Where requests go: a remote URL and key, or the embedded local server (`url` None)."""

    prefix: str
    url: str | None
    key: str | None = field(default=None, repr=False)  # never printed, never stored
    provider: str = HEROKU  # heroku | stability: the request shape its URL speaks
    key_name: str | None = None  # the variable the key came from, when not {prefix}_KEY

    @property
    def local(self) -> bool:
        """True when the embedded server is to be used."""
        return self.url is None

    @property
    def key_variable(self) -> str:
        """The variable a user fixes when the key is refused."""
        return self.key_name or f"{self.prefix}_KEY"


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def provider_of(env: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """The provider a prefix names (see the module's docstring); ConfigError for a
    `{prefix}_PROVIDER` that is neither heroku nor stability."""
    check_prefix(prefix)
    chosen = (env.get(f"{prefix}_PROVIDER") or "").strip().lower()
    if chosen:
        if chosen not in PROVIDERS:
            raise ConfigError(f"{prefix}_PROVIDER is {chosen[:40]!r}: use one of "
                              f"{', '.join(PROVIDERS)}")
        return chosen
    url = (env.get(f"{prefix}_URL") or "").strip()
    if url:
        host = _host(url)
        return STABILITY if host == "stability.ai" or host.endswith(".stability.ai") else HEROKU
    if _stability_key_alone(env, prefix):
        return STABILITY
    return HEROKU


def _stability_key_alone(env: Mapping[str, str], prefix: str) -> bool:
    """Whether `STABILITY_API_KEY` alone says "the Stability API" for this prefix."""
    own = any((env.get(f"{prefix}_{n}") or "").strip() for n in ("URL", "KEY", "PROVIDER"))
    return (prefix in (DEFAULT_PREFIX, STABILITY_PREFIX) and not own
            and bool((env.get(STABILITY_KEY_VARIABLE) or "").strip()))


def _key_of(env: Mapping[str, str], prefix: str, provider: str) -> tuple[str, str | None]:
    """(the prefix's key, the variable it came from when not {prefix}_KEY)."""
    key = (env.get(f"{prefix}_KEY") or "").strip()
    if key or provider != STABILITY:
        return key, None
    fallback = (env.get(STABILITY_KEY_VARIABLE) or "").strip()
    return fallback, (STABILITY_KEY_VARIABLE if fallback else None)


def url_of(env: Mapping[str, str], prefix: str) -> str:
    """The URL a prefix sends to, as set ("" for the embedded server): `{prefix}_URL`, or
    Stability's public base URL for a Stability prefix with a key and no URL."""
    url = (env.get(f"{prefix}_URL") or "").strip()
    if url:
        return url
    provider = provider_of(env, prefix)
    if provider == STABILITY and _key_of(env, prefix, provider)[0]:
        return STABILITY_BASE_URL
    return ""


def _how_key(prefix: str, provider: str) -> str:
    if provider == STABILITY:
        return (f"export {prefix}_KEY=sk-... (your Stability AI API key; "
                f"{STABILITY_KEY_VARIABLE} is read too)")
    return f"export {prefix}_KEY=$(heroku config:get -a APP {prefix}_KEY)"


def connection(
    env: Mapping[str, str], prefix: str = DEFAULT_PREFIX, *, local: bool = False
) -> Connection:
    """The connection the environment asks for; ConfigError when a URL comes without a key."""
    check_prefix(prefix)
    provider = provider_of(env, prefix)
    url = url_of(env, prefix)
    if local or not url:
        return Connection(prefix=prefix, url=None, provider=provider)
    url = base_url(url, prefix, provider)
    key, key_name = _key_of(env, prefix, provider)
    if not key:
        raise ConfigError(
            f"{prefix}_URL is set but {prefix}_KEY is not; set it with: "
            f"{_how_key(prefix, provider)}"
        )
    variable = key_name or f"{prefix}_KEY"
    if not _KEY.match(key):
        # A line break or a non-ASCII character cannot go in an HTTP header: every request
        # would fail in the library (as 'unexpected error'), after being counted as sent.
        raise ConfigError(
            f"{variable} has a character an API key cannot have (a space, line break, "
            f"control or non-ASCII character); copy it again with: "
            f"{_how_key(prefix, provider)}"
        )
    model = default_model(env, prefix)
    if provider == STABILITY and model != DEFAULT_MODEL:
        # The endpoint is the model: /generate/ultra serves Stable Image Ultra alone.
        raise ConfigError(f"{prefix}_MODEL_ID is {model[:60]!r}, but the stability provider's "
                          f"{STABILITY_ENDPOINT} serves {DEFAULT_MODEL} only")
    return Connection(prefix=prefix, url=url, key=key, provider=provider, key_name=key_name)


def providers(env: Mapping[str, str], prefixes: Sequence[str]) -> tuple[str, ...]:
    """The providers of the prefixes (each once, in the order first named)."""
    found: list[str] = []
    for prefix in prefixes:
        provider = provider_of(env, prefix)
        if provider not in found:
            found.append(provider)
    return tuple(found)


def _implied(conn: Connection) -> str:
    """A note when a connection's service was implied by STABILITY_API_KEY alone (a paid
    API, where the embedded server would otherwise have been used), else ""."""
    if conn.url is None or conn.key_name != STABILITY_KEY_VARIABLE:
        return ""
    return (f"{conn.prefix}: sending to {conn.url} with {STABILITY_KEY_VARIABLE} "
            f"(Stability AI's API); --local uses the embedded server")


def _unused_key(env: Mapping[str, str], conn: Connection, local: bool) -> str:
    """A warning when `{prefix}_KEY` is set but, without `{prefix}_URL`, the embedded server
    is used (not asked for with --local), else "": a URL forgotten would otherwise go
    unnoticed until the pictures turn out to be placeholders."""
    if local or not conn.local or not (env.get(f"{conn.prefix}_KEY") or "").strip():
        return ""
    return (f"{conn.prefix}_KEY is set but {conn.prefix}_URL is not, so the key is unused and "
            "the embedded local server draws placeholder pictures; set the URL with: "
            f"export {conn.prefix}_URL=$(heroku config:get -a APP {conn.prefix}_URL)")


def split_prefixes(values: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """`--env-prefix` values, each one prefix or a comma-separated list, as prefixes in the
    order given with repeats left out; (prefixes, a note per repeat)."""
    prefixes: list[str] = []
    notes = []
    for value in values:
        for prefix in (p.strip() for p in value.split(",")):
            check_prefix(prefix)
            if prefix in prefixes:
                notes.append(f"--env-prefix {prefix} is given more than once; used once")
            else:
                prefixes.append(prefix)
    if not prefixes:
        raise ConfigError("--env-prefix: give at least one prefix (e.g. DIFFUSION)")
    return tuple(prefixes), notes


def pool(
    env: Mapping[str, str], prefixes: Sequence[str], *, local: bool = False
) -> tuple[list[Connection], list[str]]:
    """The connections requests go to: one per prefix; (connections, notes).

    One prefix is `connection()`: its URL and key, or the embedded server. Several make a
    pool, where every prefix needs its URL and its key (a missing one is an error naming
    the variable, never the embedded server in its place) and all name one model. A key
    given under two prefixes is one limit: used once, with a note. Keys are compared by
    hash and never printed.
    """
    if local or len(prefixes) == 1:
        conn = connection(env, prefixes[0], local=local)
        return [conn], [note for note in (_implied(conn), _unused_key(env, conn, local)) if note]
    members: list[Connection] = []
    notes = []
    seen: dict[str, str] = {}  # SHA-256 of a key -> the prefix it came under first
    for prefix in prefixes:
        check_prefix(prefix)
        if not url_of(env, prefix):
            raise ConfigError(
                f"{prefix}_URL is not set: every member of a pool (--env-prefix "
                f"{','.join(prefixes)}) needs its URL and key; set it with: "
                f"export {prefix}_URL=$(heroku config:get -a APP {prefix}_URL)")
        conn = connection(env, prefix)
        assert conn.key is not None
        digest = hashlib.sha256(conn.key.encode()).hexdigest()
        if digest in seen:
            notes.append(f"{prefix}_KEY is the same key as {seen[digest]}_KEY: one limit, "
                         f"used once ({prefix} left out of the pool)")
            continue
        seen[digest] = prefix
        members.append(conn)
        if _implied(conn):
            notes.append(_implied(conn))
    models = {prefix: default_model(env, prefix) for prefix in prefixes}
    if len(set(models.values())) > 1:
        named = ", ".join(f"{p}_MODEL_ID is {m!r}" for p, m in models.items())
        raise ConfigError(f"the members of a pool must serve one model, but {named}; "
                          "attach the same model under each prefix")
    return members, notes


def base_url(url: str, prefix: str = DEFAULT_PREFIX, provider: str = HEROKU) -> str:
    """`{prefix}_URL`'s value checked and reduced to the service's base URL; else ConfigError."""
    how = (f"export {prefix}_URL={STABILITY_BASE_URL}" if provider == STABILITY else
           f"export {prefix}_URL=$(heroku config:get -a APP {prefix}_URL)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        # e.g. a port of 65536 or "abc", an unclosed [IPv6 bracket; the URL is not repeated
        # (it may carry a secret)
        raise ConfigError(f"{prefix}_URL is not a valid URL (check its host and port); "
                          f"set it with: {how}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{prefix}_URL is not an http(s) URL; set it with: {how}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # The endpoint is appended to the URL's path: a query would end up in the path, and
        # a key put there would be printed in errors. The key goes in {prefix}_KEY.
        raise ConfigError(f"{prefix}_URL has a '?' query or '#' part; give only the base URL "
                          f"of the service (e.g. https://us.inference.heroku.com): {how}")
    # Without a trailing /v1 or the endpoint a user may have copied from the API docs.
    path = parts.path.rstrip("/")
    tails = ((STABILITY_ENDPOINT, "/v2beta") if provider == STABILITY else
             ("/v1/images/generations", "/v1"))
    for tail in tails:
        if path.endswith(tail):
            path = path[: -len(tail)]
            break
    return f"{parts.scheme.lower()}://{parts.netloc}{path}"


def backend_name(url: str) -> str:
    """The base URL without credentials, query or fragment (what results.jsonl records)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    # :443 on https (or :80 on http) is the same service: the same name, or a run with the
    # port written out would not count the images made without it as done.
    port = None if parts.port == DEFAULT_PORTS.get(scheme) else parts.port
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((scheme, netloc.lower(), parts.path.rstrip("/"), "", ""))


def status_backend(env: Mapping[str, str], prefix: str, local: bool) -> str:
    """The backend name `run` would record, from the same checks and base URL as `run`."""
    check_prefix(prefix)
    url = url_of(env, prefix)
    return LOCAL_BACKEND if local or not url else backend_name(
        base_url(url, prefix, provider_of(env, prefix)))


def status_backends(env: Mapping[str, str], prefixes: Sequence[str], local: bool
                    ) -> dict[str, str]:
    """Prefix -> the backend name `run` would record, for one backend or each of a pool's
    members (every one of which needs its URL, as for `run`)."""
    if local or len(prefixes) == 1:
        return {prefixes[0]: status_backend(env, prefixes[0], local)}
    for prefix in prefixes:
        check_prefix(prefix)
        if not url_of(env, prefix):
            raise ConfigError(f"{prefix}_URL is not set: every member of a pool needs its URL")
    return {p: status_backend(env, p, False) for p in prefixes}

"""Settings from the environment that every provider shares: the prefix, `{PREFIX}_MODEL_ID`,
the checks of a URL and a key, and the backend name a URL is recorded under.

The prefix is the alias chosen when the model was attached (`--as DIFFUSION`), changeable
with `--env-prefix`. Which provider, URL and key a prefix names is decided by
`imagebatch.providers.connect`, from each provider's own rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError
from .apispec import DEFAULT_MODEL

DEFAULT_PREFIX = "DIFFUSION"
REQUEST_TIMEOUT = 120.0  # seconds per request, whole response included (--timeout)
LOCAL_BACKEND = "local"  # the backend name of the embedded server, whatever its port
DEFAULT_PORTS = {"http": 80, "https": 443}
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# What a bearer token can hold (RFC 6750's token68 and then some): printable ASCII, no space.
KEY_CHARS = re.compile(r"[\x21-\x7e]+\Z")


def check_prefix(prefix: str) -> str:
    """The prefix itself when it can name environment variables; else ConfigError."""
    if not _PREFIX.match(prefix or ""):
        raise ConfigError(f"--env-prefix {prefix!r}: use letters, digits and _ (e.g. DIFFUSION)")
    return prefix


def default_model(env: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """`{PREFIX}_MODEL_ID` when set and not blank, else stable-image-ultra."""
    return (env.get(f"{prefix}_MODEL_ID") or "").strip() or DEFAULT_MODEL


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


def base_url(url: str, prefix: str, how: str, tails: Sequence[str]) -> str:
    """`{prefix}_URL`'s value checked and reduced to the service's base URL, without the
    first of `tails` it ends with; else ConfigError saying `how` to set it."""
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

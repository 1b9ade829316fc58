"""Which provider, URL and key each environment prefix names: `{PREFIX}_PROVIDER`,
`{PREFIX}_URL`, `{PREFIX}_KEY`, and the variables a provider reads besides them.

Each prefix names one provider: `{PREFIX}_PROVIDER` when set; else the provider whose host
`{PREFIX}_URL` is on; else one the environment implies with none of the prefix's own
variables set (Stability's `STABILITY_API_KEY` alone for DIFFUSION and STABILITY); else the
default (heroku). A prefix without a URL goes to its provider's default URL when it has
one (Stability's public API once it has a key), and to the embedded server otherwise. The
key is kept out of every repr and message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..planning import config
from ..planning.config import DEFAULT_PREFIX, check_prefix, default_model
from . import default, get, registered
from .base import Provider


@dataclass(frozen=True, slots=True)
class Connection:
    """Where requests go: a remote URL and key, or the embedded local server (`url` None)."""

    prefix: str
    url: str | None
    key: str | None = field(default=None, repr=False)  # never printed, never stored
    provider: Provider = field(default_factory=default)  # the request shape its URL speaks
    key_name: str | None = None  # the variable the key came from, when not {prefix}_KEY

    @property
    def local(self) -> bool:
        """True when the embedded server is to be used."""
        return self.url is None

    @property
    def key_variable(self) -> str:
        """The variable a user fixes when the key is refused."""
        return self.key_name or f"{self.prefix}_KEY"


def provider_of(env: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> Provider:
    """The provider a prefix names (see the module's docstring); ConfigError for a
    `{prefix}_PROVIDER` no provider has registered."""
    check_prefix(prefix)
    chosen = (env.get(f"{prefix}_PROVIDER") or "").strip().lower()
    if chosen:
        return get(chosen, f"{prefix}_PROVIDER")
    url = (env.get(f"{prefix}_URL") or "").strip()
    if url:
        return next((p for p in registered() if p.claims_url(url)), default())
    return next((p for p in registered() if p.implied(env, prefix)), default())


def url_of(env: Mapping[str, str], prefix: str) -> str:
    """The URL a prefix sends to, as set ("" for the embedded server): `{prefix}_URL`, or
    its provider's default URL (Stability's public one once it has a key)."""
    url = (env.get(f"{prefix}_URL") or "").strip()
    if url:
        return url
    provider = provider_of(env, prefix)
    return provider.default_url(env, prefix, provider.key_of(env, prefix)[0])


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
    key, key_name = provider.key_of(env, prefix)
    if not key and provider.needs_key(env, prefix):
        raise ConfigError(
            f"{prefix}_URL is set but {prefix}_KEY is not; set it with: "
            f"{provider.how_key(prefix)}"
        )
    variable = key_name or f"{prefix}_KEY"
    if key and not config.KEY_CHARS.match(key):
        # A line break or a non-ASCII character cannot go in an HTTP header: every request
        # would fail in the library (as 'unexpected error'), after being counted as sent.
        raise ConfigError(
            f"{variable} has a character an API key cannot have (a space, line break, "
            f"control or non-ASCII character); copy it again with: "
            f"{provider.how_key(prefix)}"
        )
    provider.check_model(prefix, default_model(env, prefix))
    return Connection(prefix=prefix, url=url, key=key, provider=provider, key_name=key_name)


def providers(env: Mapping[str, str], prefixes: Sequence[str]) -> tuple[Provider, ...]:
    """The providers of the prefixes (each once, in the order first named)."""
    found: list[Provider] = []
    for prefix in prefixes:
        provider = provider_of(env, prefix)
        if provider not in found:
            found.append(provider)
    return tuple(found)


def _implied(conn: Connection) -> str:
    """A note when a connection's service was implied rather than named, else ""."""
    if conn.url is None:
        return ""
    return conn.provider.note(conn.prefix, conn.url, conn.key_name)


def _unused_key(env: Mapping[str, str], conn: Connection, local: bool) -> str:
    """A warning when `{prefix}_KEY` is set but, without `{prefix}_URL`, the embedded server
    is used (not asked for with --local), else "": a URL forgotten would otherwise go
    unnoticed until the pictures turn out to be placeholders."""
    if local or not conn.local or not (env.get(f"{conn.prefix}_KEY") or "").strip():
        return ""
    return (f"{conn.prefix}_KEY is set but {conn.prefix}_URL is not, so the key is unused and "
            "the embedded local server draws placeholder pictures; set the URL with: "
            f"export {conn.prefix}_URL=$(heroku config:get -a APP {conn.prefix}_URL)")


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
        if conn.key:
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


def base_url(url: str, prefix: str = DEFAULT_PREFIX, provider: Provider | None = None) -> str:
    """`{prefix}_URL`'s value checked and reduced to the service's base URL (without a tail
    its provider's API docs show, e.g. /v1); else ConfigError."""
    provider = provider or default()
    return config.base_url(url, prefix, provider.how_url(prefix), provider.url_tails)


def status_backend(env: Mapping[str, str], prefix: str, local: bool) -> str:
    """The backend name `run` would record, from the same checks and base URL as `run`."""
    check_prefix(prefix)
    url = url_of(env, prefix)
    return config.LOCAL_BACKEND if local or not url else config.backend_name(
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

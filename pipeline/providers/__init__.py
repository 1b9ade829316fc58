"""The providers of the model, one module each, and their registry.

Every provider, built in or not, registers through `register()`; `get()` finds one by the
name `{PREFIX}_PROVIDER` gives. The registry is installed for the folders below (planning
and storage know a provider only through `planning.apispec.Provider`), so that a manifest
planned without naming a provider is planned for the default one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ConfigError
from ..planning import apispec
from .base import Provider

_registered: dict[str, Provider] = {}
_default: list[Provider] = []


def register(provider: Provider, *, default: bool = False) -> Provider:
    """Add `provider` under its name (the first registered, or one registered with
    `default=True`, is the default); the provider."""
    if not provider.name or provider.name in _registered:
        raise ValueError(f"provider name {provider.name!r} is empty or already registered")
    _registered[provider.name] = provider
    if default or not _default:
        _default[:] = [provider]
    return provider


def names() -> tuple[str, ...]:
    """The registered providers' names, in the order registered."""
    return tuple(_registered)


def registered() -> tuple[Provider, ...]:
    """The registered providers, in the order registered."""
    return tuple(_registered.values())


def default() -> Provider:
    """The provider of a prefix that names none."""
    return _default[0]


def get(name: str, variable: str = "provider") -> Provider:
    """The provider of that name; ConfigError naming `variable` for an unknown one."""
    found = _registered.get(name.strip().lower())
    if found is None:
        raise ConfigError(f"{variable} is {name[:40]!r}: use one of {', '.join(names())}")
    return found


def of(planned: apispec.Provider) -> Provider:
    """A job's provider (planning's view of it) as the provider it is."""
    if not isinstance(planned, Provider):
        raise TypeError(f"{planned!r} is not a registered provider")
    return planned


class _Installed:
    """The registry as the folders below providers/ ask it (planning.apispec.Providers)."""

    def default(self) -> apispec.Provider:
        return default()

    def chosen(self, env: Mapping[str, str], prefixes: Sequence[str]
               ) -> tuple[apispec.Provider, ...]:
        from .connect import providers  # noqa: PLC0415 - connect imports this module

        return providers(env, prefixes)

    def backends(self, env: Mapping[str, str], prefixes: Sequence[str],
                 local: bool) -> dict[str, str]:
        from .connect import status_backends  # noqa: PLC0415 - connect imports this module

        return status_backends(env, prefixes, local)


# The built-in providers register as a fourth one would: one line each.
from .bedrock import BEDROCK  # noqa: E402
from .heroku import HEROKU  # noqa: E402
from .stability import STABILITY  # noqa: E402

register(HEROKU, default=True)
register(STABILITY)
register(BEDROCK)

apispec.install(_Installed())

"""What a command works on, resolved once: the environment, the pool's members and their
providers, the plans, the backends whose images count as done, the output folder, the cache.

Every command (`run`, `plan`, `status`, `sheet`, `pull`, `push`, `export`, `pick`,
`review`, `diff`, `merge`) gets its context from `resolve`, so no command can disagree with
`run` about what a job is: a mixed pool's jobs are planned for every provider of the pool
(each variant its own key), and a job is done when an image of any of those keys, made by
any member, is on disk.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..planning import apispec, config
from ..planning.manifest import DEFAULT_MAX_JOBS, load_plans
from ..planning.plan import Plan
from .cache import CACHE_VARIABLE, Cache, check_cache
from .store import Store


class CacheUse(enum.Enum):
    """Whether a command uses the shared cache."""

    OFF = "off"  # never, whatever --cache or $IMAGEBATCH_CACHE say
    ON = "on"  # --cache, else $IMAGEBATCH_CACHE, else none
    REQUIRED = "required"  # as ON; an error when neither names one


@dataclass(frozen=True, slots=True)
class Context:
    """A command's view of the world: plans, the backends that count, the folder, the cache."""

    env: Mapping[str, str] = field(repr=False)
    prefixes: tuple[str, ...]
    local: bool
    providers: tuple[apispec.Provider, ...]  # each prefix's provider, each once, in order
    members: Mapping[str, str]  # prefix -> the backend name `run` records for it
    plans: tuple[Plan, ...]
    out_dir: Path
    cache: Cache | None = None
    notes: tuple[str, ...] = ()  # said once, before any work (e.g. a repeated prefix)

    @property
    def backend(self) -> str:
        """The backend name `run` would record: one member's, or a pool's names joined."""
        return ",".join(sorted(set(self.members.values())))

    @property
    def judged(self) -> frozenset[str]:
        """The backends whose images count as done: every member of the pool."""
        return frozenset(self.members.values())

    @property
    def plan(self) -> Plan:
        """The one plan of a command that takes one manifest."""
        (plan,) = self.plans
        return plan

    def root(self, plan: Plan) -> Path:
        """The plan's outputs folder."""
        return self.out_dir / plan.name

    def store(self, plan: Plan) -> Store:
        """The plan's store, judging done as `run` does (a pool's store knows its members)."""
        pooled = len(self.members) > 1
        return Store(self.out_dir, plan.name, self.backend,
                     members=dict(self.members) if pooled else None)


def resolve(
    manifests: Sequence[str], *, env: Mapping[str, str] | None = None,
    env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,), local: bool = False,
    out_dir: str | Path = Path("outputs"), max_jobs: int = DEFAULT_MAX_JOBS,
    shard: tuple[int, int] | None = None, cache: str | None = None,
    use_cache: CacheUse = CacheUse.OFF, judge: bool = True,
) -> Context:
    """The context of a command on `manifests`; every check `run` makes of the environment
    and manifests, before anything is read from disk or sent.

    `cache` is `--cache` (None: $IMAGEBATCH_CACHE), used as `use_cache` says; a cache is
    opened and reached here (CacheError, exit 2, when it cannot be used).
    `judge=False` leaves the members out (`plan --json` and `validate` read no URL or key).
    The providers are chosen by the registry imagebatch.providers installs.
    """
    env = os.environ if env is None else env
    prefixes, notes = config.split_prefixes(env_prefixes)
    registry = apispec.registry()
    for prefix in prefixes:
        config.check_prefix(prefix)
    providers = registry.chosen(env, prefixes)
    plans = load_plans(manifests, env, prefixes, max_jobs=max_jobs, shard=shard,
                       providers=providers)
    members = registry.backends(env, prefixes, local) if judge else {}
    opened: Cache | None = None
    if use_cache is not CacheUse.OFF:
        opened = check_cache(cache, env)
        if opened is None and use_cache is CacheUse.REQUIRED:
            raise UsageError(f"no cache: give --cache URL or set {CACHE_VARIABLE}")
    return Context(env=env, prefixes=prefixes, local=local,
                   providers=providers, members=members,
                   plans=tuple(plans), out_dir=Path(out_dir), cache=opened, notes=tuple(notes))

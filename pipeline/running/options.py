"""What `imagebatch run` can be asked to do, with every default defined once.

The command line takes its defaults from here, and `run` reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..planning.budget import Budget, budget_from
from ..planning.config import DEFAULT_PREFIX, REQUEST_TIMEOUT
from ..planning.costs import Price, price_from
from ..planning.manifest import DEFAULT_MAX_JOBS
from ..planning.select import ALL, Selection
from .settings import RunSettings

DEFAULT_OUT = Path("outputs")
#: Starts a minute for a remote URL when --rpm is not given: the documented Stable Image
#: Ultra limit, per model resource (the service's advertised limit replaces it).
REMOTE_DEFAULT_RPM = 20.0

_RUN = RunSettings()


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `imagebatch run` was asked to do."""

    manifests: tuple[str, ...]
    out: Path = DEFAULT_OUT
    concurrency: int = _RUN.concurrency
    rpm: float | None = None  # per backend; None: REMOTE_DEFAULT_RPM (or its advertised limit)
    retries: int = _RUN.retries
    timeout: float = REQUEST_TIMEOUT
    force: bool = False
    # send again the jobs whose last answer was final (content filtered, refused as asked):
    # a run leaves them alone otherwise, since the same request would get the same answer
    retry_failed: bool = False
    verify: bool = False  # hash every image in the done check, not only changed-looking ones
    shard: tuple[int, int] | None = None
    max_jobs: int = DEFAULT_MAX_JOBS
    local: bool = False
    post: bool = True
    # Each names {PREFIX}_URL, _KEY, _MODEL_ID; several (or a comma-separated list) make a
    # pool of backends.
    env_prefixes: tuple[str, ...] = (DEFAULT_PREFIX,)
    verbose: int = 0
    # The shared image cache's URL (--cache); None: $IMAGEBATCH_CACHE, when it is set.
    cache: str | None = None
    backoff_base: float = _RUN.backoff_base  # seconds; first retry waits up to this
    price: str | None = None  # --price as given; None: $IMAGEBATCH_PRICE, or unknown
    budget: int | None = None  # --budget: image requests this run may send
    budget_cost: str | None = None  # --budget-cost: the same in money, at the price
    selection: Selection = field(default=ALL)  # --only, --first-seeds

    def settings(self) -> RunSettings:
        """The runner's part of these options."""
        return RunSettings(concurrency=self.concurrency, retries=self.retries,
                           backoff_base=self.backoff_base)

    def spending(self, env: Mapping[str, str]) -> tuple[Price | None, Budget | None]:
        """The price per image (or None) and the budget (or None) these options and `env`
        ask for; UsageError for a price or budget that is not one."""
        price = price_from(self.price, env)
        return price, budget_from(self.budget, self.budget_cost, price)


def default(name: str) -> Any:
    """The default of RunOptions field `name`."""
    return next(f.default for f in fields(RunOptions) if f.name == name)

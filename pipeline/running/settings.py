"""How hard a run pushes: the runner's and the retries' settings, with their defaults.

Apart from the code that uses them (the runner, tenacity, asyncio) so that the command line
can take its defaults from here without loading any of it: `imagebatch plan` and the other
commands that send nothing start in less time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How often and how long to retry."""

    retries: int = 5  # retries after the first attempt
    backoff_base: float = 1.0  # seconds; the first backoff is uniform in [0, base]
    backoff_cap: float = 30.0  # no single backoff longer than this
    retry_after_cap: float = 120.0  # a server asking for longer is believed only this far


_RETRY = RetrySettings()


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How hard to push: concurrency, retries and when to give up on a throttled service."""

    concurrency: int = 4
    retries: int = _RETRY.retries
    backoff_base: float = _RETRY.backoff_base
    backoff_cap: float = _RETRY.backoff_cap
    retry_after_cap: float = _RETRY.retry_after_cap
    # Seconds of nothing but 429s (no image in between) before the run stops: a key whose
    # quota is spent would otherwise have every job wait out its retries to record them
    # all failed.
    throttled_stop: float = 900.0

    @property
    def retry(self) -> RetrySettings:
        """The retry part of the settings."""
        return RetrySettings(self.retries, self.backoff_base, self.backoff_cap,
                             self.retry_after_cap)

"""Progress display for `run`: a live one-line bar on a terminal, plain lines every few seconds
off one."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Shows done, failed, rate per minute and ETA for `total` jobs; throttled, never blocking."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        # A terminal can take ten redraws a second; a CI log wants a line every few seconds.
        self.interval = interval if interval is not None else (0.1 if self.tty else 5.0)
        self.enabled = enabled and total > 0
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._done = 0
        self._failed = 0
        self._waiting = 0  # jobs another run (on the shared cache) is making
        self._drawn = False

    def line(self) -> str:
        """The current status text."""
        finished = self._done + self._failed
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = finished / elapsed * 60
        eta = (self.total - finished) / (finished / elapsed) if finished else None
        pct = finished / self.total * 100 if self.total else 100.0
        text = (f"{finished}/{self.total} ({pct:.0f}%) done {self._done} failed {self._failed}"
                f"  {rate:.1f}/min  ETA {_clock_text(eta) if eta is not None else '?'}")
        if self._waiting:
            text += (f"  waiting for {self._waiting} image{'s' if self._waiting != 1 else ''}"
                     " another run is making")
        if self.tty:
            width = 24
            filled = int(width * finished / self.total) if self.total else width
            text = "[" + "#" * filled + "." * (width - filled) + "] " + text
        return text

    def update(self, done: int, failed: int, *, waiting: int = 0, force: bool = False) -> None:
        """Record new counts (`waiting`: jobs another run is making); redraw if enough time
        has passed (or `force`)."""
        self._done, self._failed, self._waiting = done, failed, waiting
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write("progress: " + self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the bar's line."""
        if not self.enabled:
            return
        self.update(self._done, self._failed, waiting=self._waiting, force=True)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

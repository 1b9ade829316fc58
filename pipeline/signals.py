"""SIGINT and SIGTERM handled on the running event loop, for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], None], *,
                    ignore_after: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """SIGINT and SIGTERM call `callback` on the running loop while the block runs. After
    it, when `ignore_after()` is true (a stop is under way), both stay ignored: the rest of
    the stop (writing a summary) must not be cut short by a late second signal."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
    try:
        yield
    finally:
        ignore = ignore_after()
        late: KeyboardInterrupt | None = None
        # Each step is done again when a late SIGINT cuts it short. Taking asyncio's handler
        # off puts Python's default one back, under which a signal raises KeyboardInterrupt
        # at the next line; signal.signal() itself first runs the handlers of signals already
        # received, so setting SIG_IGN can raise too. A step cut short left a handler on the
        # loop, or the loop's wakeup fd set, when the loop then closed that fd: every signal
        # after it printed "Exception ignored when trying to write to the signal wakeup fd".
        for sig in installed:
            late = _despite_late_signals(functools.partial(_take_off, loop, sig, ignore)) or late

        def clear_wakeup_fd() -> None:
            # asyncio clears it when the loop's last handler goes; a signal landing between
            # the two leaves it set. No other handler is put on the loop here (asyncio has
            # no public way to ask whether the loop has any left).
            if installed and not getattr(loop, "_signal_handlers", None):
                with contextlib.suppress(ValueError):
                    signal.set_wakeup_fd(-1)
        late = _despite_late_signals(clear_wakeup_fd) or late
        # Once stopping, a late signal is one of those ignored; otherwise it is Ctrl-C
        # (main turns it into exit 130).
        if late is not None and not ignore:
            raise late


#: How many times a step is tried while signals keep landing in it (each try takes
#: microseconds; a held-down Ctrl-C repeats every few milliseconds).
_TRIES = 50


def _despite_late_signals(step: Callable[[], object]) -> KeyboardInterrupt | None:
    """Run `step` to its end, again each time a late SIGINT cuts it short (at most _TRIES
    times): the last KeyboardInterrupt it raised, or None."""
    late = None
    for _ in range(_TRIES):
        try:
            step()
            return late
        except KeyboardInterrupt as exc:
            late = exc
    return late


def _take_off(loop: asyncio.AbstractEventLoop, sig: int, ignore: bool) -> None:
    """Take the loop's handler of `sig` off (nothing when it is off already), then, when
    `ignore`, ignore the signal, even when the first step was cut short."""
    try:
        loop.remove_signal_handler(sig)
    finally:
        if ignore:
            signal.signal(sig, signal.SIG_IGN)

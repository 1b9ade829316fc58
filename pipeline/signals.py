"""SIGINT and SIGTERM handled on the running event loop, for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
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
        for sig in installed:
            try:
                loop.remove_signal_handler(sig)  # puts Python's default handler back...
            except KeyboardInterrupt as exc:  # ...under which a signal landing now raises
                late = exc
            finally:
                if ignore:
                    signal.signal(sig, signal.SIG_IGN)
        # Once stopping, a late signal is one of those ignored; otherwise it is Ctrl-C
        # (main turns it into exit 130).
        if late is not None and not ignore:
            raise late

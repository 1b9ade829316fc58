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
        for sig in installed:
            loop.remove_signal_handler(sig)
            if ignore_after():
                signal.signal(sig, signal.SIG_IGN)

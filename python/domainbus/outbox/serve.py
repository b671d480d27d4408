"""`serve`: a relay that keeps running, woken by the store (NOTIFY on PostgreSQL) or by polling.

    stop = threading.Event()
    outbox.serve(dispatcher, poll_interval=1.0, stop=stop)   # in a worker thread or process

Each wake-up relays until no free row is left, then waits for the store's announcement of new
free rows, at most `poll_interval` seconds (the fallback that also picks up rows whose claim
ran out). A handler's failure is logged and counted on its row (see `relay`), and the loop goes
on; `BaseException`s (KeyboardInterrupt) end it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from domainbus.outbox.store import RelayResult

__all__ = ["serve"]

logger = logging.getLogger("domainbus.outbox")
_STOP_CHECK = 0.25  # seconds between looks at `stop` while waiting


class _Serving(Protocol):
    def relay(self, dispatcher: Any, batch_size: int = 1000, *, take_over: bool = False) -> Any: ...
    def wait(self, timeout: float) -> bool: ...


def serve(
    store: _Serving,
    dispatcher: Any,
    *,
    batch_size: int = 1000,
    poll_interval: float = 1.0,
    stop: threading.Event | None = None,
) -> RelayResult:
    """Relay, wait, relay... until `stop` is set; returns the totals."""
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float):
        raise TypeError(f"poll_interval must be a number, not {type(poll_interval).__qualname__}")
    if not poll_interval > 0:
        raise ValueError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
    delivered, dead = 0, []
    store.wait(0)  # start listening before the first relay: no announcement falls in between
    while stop is None or not stop.is_set():
        try:
            result = store.relay(dispatcher, batch_size)
        except Exception:
            logger.exception("domainbus: relaying failed; retrying after the next wake-up")
        else:
            delivered += result.delivered
            dead += result.dead_lettered
            if result.delivered or result.dead_lettered:
                continue  # more may have come meanwhile
        _wait(store, poll_interval, stop)
    return RelayResult(delivered, tuple(dead))


def _wait(store: _Serving, poll_interval: float, stop: threading.Event | None) -> None:
    """Until the store announces free rows, `poll_interval` passes, or `stop` is set (looked at
    every quarter of a second)."""
    deadline = time.monotonic() + poll_interval
    while stop is None or not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0 or store.wait(min(left, _STOP_CHECK)):
            return

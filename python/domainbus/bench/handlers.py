"""Handlers for the workloads: no-op ones for timing, counting ones for the correctness check.

A workload has handler *slots*; slot k gets one distinct function, registered on one or more
classes. Timing uses no-ops (the cost measured is routing plus the call itself); the check uses
counters that tally `(slot, event class name)`, so a system that calls a handler for the wrong
events, too often or not at all is caught before it is timed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["Handler", "Tally", "counting_handlers", "noop_handlers"]

Handler = Callable[[Any], Any]
Tally = Counter[tuple[int, str]]


def _noop() -> Handler:
    def noop(event: Any) -> None:
        return None

    return noop


def _async_noop() -> Handler:
    async def noop(event: Any) -> None:
        return None

    return noop


def noop_handlers(slots: int, *, is_async: bool = False) -> list[Handler]:
    """`slots` distinct no-op handlers (distinct, so no system folds them into one)."""
    make = _async_noop if is_async else _noop
    return [make() for _ in range(slots)]


def counting_handlers(slots: int, tally: Tally, *, is_async: bool = False) -> list[Handler]:
    """`slots` handlers that count their calls in `tally[slot, type(event).__name__]`."""

    def make(slot: int) -> Handler:
        def count(event: Any) -> None:
            tally[slot, type(event).__name__] += 1

        async def count_async(event: Any) -> None:
            count(event)

        return count_async if is_async else count

    return [make(slot) for slot in range(slots)]

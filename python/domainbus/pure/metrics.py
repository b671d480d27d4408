"""Per-handler metrics (rule 16 of `domainbus.pure.dispatcher`): the table a dispatcher counts
into while metrics are on, and the snapshot it reports. The Rust backend keeps the same table
in its core (rust/metrics.rs), with the same sampling and the same records.

A row per (event type, handler): the event's concrete class as routed (a handler registered on
a base class gets one row per subclass dispatched to it) and the handler's `module.qualname`
(rule 10), so a `once` handler registered again and again adds to one row. Per row: the calls,
the failures (calls that raised an `Exception`, whatever `on_error` then did; a
KeyboardInterrupt or CancelledError ends a call but is no failure) and the time.

Time is wall-clock, monotonic, per handler call: the handler's own call (inclusive of the nested
dispatches it makes in "immediate" mode; without `on_error` or `on_unhandled`), and for async
dispatch until the awaitable it returned is done (time it spends suspended included; with
`concurrent=True`, until its task is done). A clock read costs more here than a whole
synchronous dispatch (about 75 ns against 30, measured), so synchronous calls are *sampled*:
a row times its first call, then about one call in `SAMPLE` (a countdown from the row's last
timed duration), and every call while its timed calls take `SLOW_NS` or more (there a clock
read costs under 1%). `total_ns` is the timed nanoseconds scaled to all calls
(`timed_ns * calls // timed_calls`), exact when `timed_calls == calls`; async calls are all
timed. Each timed duration has the cost of a clock read itself subtracted (measured once).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from domainbus._notes import describe_handler

__all__ = ["SAMPLE", "SLOW_NS", "MetricsTable", "Row"]

SAMPLE = 64  # a fast handler is timed on about one call in this many
SLOW_NS = 20_000  # a timed call this long or longer: the next call is timed too
_PLANS_LIMIT = 4096  # rows remembered per resolved list; the memo starts over past this

_clock_cost: int | None = None


def clock_cost() -> int:
    """What reading the clock adds to a measured interval: the least of a few back-to-back
    reads' differences (measured once)."""
    global _clock_cost
    if _clock_cost is None:
        _clock_cost = min(-perf_counter_ns() + perf_counter_ns() for _ in range(64))
    return _clock_cost


class Row:
    """The counters of one (event type, handler) pair."""

    __slots__ = (
        "calls",
        "countdown",
        "event_type",
        "failures",
        "handler",
        "klass",
        "timed",
        "timed_ns",
    )

    def __init__(self, klass: type, handler: str) -> None:
        self.klass = klass  # held, so the class's identity stays its own until a reset
        self.event_type: str = klass.__qualname__
        self.handler = handler
        self.calls = 0
        self.failures = 0
        self.timed = 0
        self.timed_ns = 0
        self.countdown = 0  # calls to let pass untimed before the next timed one

    # With the GIL held, CPython does not switch threads between the load and the store of
    # `self.calls += 1` (no eval-breaker check in between), so threads lose no counts.
    def begin(self) -> int | None:
        """Count a call about to be made; its start time when this call is to be timed."""
        self.calls += 1
        if self.countdown:
            self.countdown -= 1
            return None
        return perf_counter_ns()

    def end(self, start: int | None, failed: bool) -> None:
        """The call counted by `begin` is over."""
        if failed:
            self.failures += 1
        if start is not None:
            self.add_time(perf_counter_ns() - start)

    def add_time(self, elapsed: int) -> None:
        """One timed call took `elapsed` ns (clock cost included); schedule the next one."""
        elapsed = max(elapsed - clock_cost(), 0)
        self.timed += 1
        self.timed_ns += elapsed
        # the low digits of a duration in ns are as good as random: no stride to alias with
        self.countdown = 0 if elapsed >= SLOW_NS else SAMPLE // 2 + elapsed % SAMPLE

    def record(self, elapsed: int, failed: bool) -> None:
        """One call, timed from the outside (the general async path)."""
        self.calls += 1
        if failed:
            self.failures += 1
        self.add_time(elapsed)

    def snapshot(self) -> dict[str, Any]:
        timed = self.timed
        return {
            "event_type": self.event_type,
            "handler": self.handler,
            "calls": self.calls,
            "failures": self.failures,
            "timed_calls": timed,
            "total_ns": self.timed_ns * self.calls // timed if timed else 0,
        }


class MetricsTable:
    """The rows of one dispatcher, by (id of the class, handler name): classes are told apart
    by identity (rule 1), and each row holds its class, so the id stays its own."""

    def __init__(self) -> None:
        clock_cost()
        self._rows: dict[tuple[int, str], Row] = {}
        # id(class) -> (its resolved registrations, their rows): one lookup per event
        self._plans: dict[int, tuple[tuple[Any, ...], tuple[Row | None, ...]]] = {}

    def row(self, event_type: type, handler: object) -> Row:
        """The row of `handler` (the callable itself) for events of exactly `event_type`."""
        name = describe_handler(handler)
        found = self._rows.get((id(event_type), name))
        if found is None:
            found = self._rows.setdefault((id(event_type), name), Row(event_type, name))
        return found

    def rows(
        self, event_type: type, regs: tuple[Any, ...], handler_of: Callable[[Any], object]
    ) -> tuple[Row | None, ...]:
        """The row of each resolved registration (None for a weak one whose target is gone).

        Memoised per resolved list (a new registry resolves new lists): its identity is
        checked, and the memo holds the list, so the id cannot be another's meanwhile."""
        plan = self._plans.get(id(event_type))
        if plan is not None and plan[0] is regs:
            return plan[1]
        rows = tuple(
            None if (handler := handler_of(reg)) is None else self.row(event_type, handler)
            for reg in regs
        )
        if len(self._plans) >= _PLANS_LIMIT:
            self._plans = {}
        self._plans[id(event_type)] = (regs, rows)
        return rows

    def forget_plans(self) -> None:
        """Drop the memo of resolved lists (the registry changed: they are stale)."""
        if self._plans:
            self._plans = {}

    def snapshot(self) -> list[dict[str, Any]]:
        """One record per row called at least once, slowest (`total_ns`) first."""
        records = [row.snapshot() for row in list(self._rows.values()) if row.calls]
        records.sort(key=lambda r: (-r["total_ns"], -r["calls"], r["event_type"], r["handler"]))
        return records

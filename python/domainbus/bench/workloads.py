"""The named workloads: which events are published, to which handlers, by which call.

Every workload gives each of its handler slots one handler that must receive every event, so
the expected handler calls are known without running any system, and the floor (each handler
mapped over the events) is defined for all of them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from domainbus.bench import drivers
from domainbus.bench.events import FLAT_TYPES, HIERARCHY_BASES, HIERARCHY_TYPES
from domainbus.bench.handlers import Handler, Tally
from domainbus.bench.systems import System, Wiring

__all__ = ["WORKLOADS", "Workload", "by_name"]

Mode = Literal["batch", "single", "queue", "async", "decode"]
USERS = 1_000  # distinct user ids among a workload's events
_USER_IDS = tuple(f"user-{i}" for i in range(USERS))


@dataclass(frozen=True)
class Workload:
    """A named benchmark: the event classes published (uniformly at random, fixed seed), the
    `(class, handler slot)` registrations, and the `mode` in which events are published."""

    name: str
    summary: str
    event_types: tuple[type, ...]
    routes: tuple[tuple[type, int], ...]
    mode: Mode = "batch"

    @property
    def slots(self) -> int:
        """How many distinct handlers the workload registers."""
        return 1 + max(slot for _, slot in self.routes)

    @property
    def is_async(self) -> bool:
        """Whether the handlers are coroutine functions."""
        return self.mode == "async"

    @property
    def needs_mro(self) -> bool:
        """True when some event reaches a handler only through a base class."""
        routed = {event_type for event_type, _ in self.routes}
        return any(event_type not in routed for event_type in self.event_types)

    def unavailable(self) -> str | None:
        """Why the domainbus API this workload drives is not available yet, or None."""
        return drivers.unavailable(self.mode)

    def incompatibility(self, system: System) -> str | None:
        """Why `system` cannot express this workload, or None."""
        if self.needs_mro and system.routing == "exact":
            return "routes by exact type only, not along the MRO"
        if self.mode == "queue" and system.routing == "none":
            return "a thread handoff is not a floor (see the queue.SimpleQueue rows)"
        return None

    def wiring(self, handlers: Sequence[Handler]) -> Wiring:
        """The registrations with slot k bound to `handlers[k]`."""
        return Wiring(
            routes=tuple((event_type, handlers[slot]) for event_type, slot in self.routes),
            event_types=self.event_types,
        )

    def build_events(self, count: int, seed: int = 0) -> list[Any]:
        """`count` events of this workload's classes, the class of each drawn at random."""
        if count < 1:
            raise ValueError(f"a workload needs at least one event, not {count}")
        rng = random.Random(seed)
        classes = rng.choices(self.event_types, k=count)
        return [cls(user_id=_USER_IDS[i % USERS], sequence=i) for i, cls in enumerate(classes)]

    def expected_calls(self, events: Sequence[Any]) -> Tally:
        """The handler calls a correct dispatcher makes for `events`, per (slot, event class)."""
        per_class = Counter(type(event) for event in events)
        tally = Tally()
        for slot in range(self.slots):
            bases = tuple(event_type for event_type, s in self.routes if s == slot)
            for event_type, count in per_class.items():
                if issubclass(event_type, bases):
                    tally[slot, event_type.__name__] += count
        return tally


def _flat(handlers: int) -> tuple[tuple[type, int], ...]:
    return tuple((event_type, slot) for event_type in FLAT_TYPES for slot in range(handlers))


_ON_BASES = tuple(
    (base, slot)
    for slot, base in enumerate((HIERARCHY_BASES[0], HIERARCHY_BASES[2], HIERARCHY_BASES[5]))
)

WORKLOADS: tuple[Workload, ...] = (
    Workload("1-handler", "10 classes, 1 handler each, one batch", FLAT_TYPES, _flat(1)),
    Workload("3-handlers", "10 classes, 3 handlers each, one batch", FLAT_TYPES, _flat(3)),
    Workload(
        "single",
        "10 classes, 1 handler each, one dispatch call per event from a Python loop",
        FLAT_TYPES,
        _flat(1),
        mode="single",
    ),
    Workload(
        "hierarchy",
        "10 leaf classes under a 6-deep chain, 3 handlers on base classes (MRO routing)",
        HIERARCHY_TYPES,
        _ON_BASES,
    ),
    Workload(
        "queue",
        "10 classes, 1 handler each, 4 producer threads into a BatchQueue"
        " (other systems: a queue.SimpleQueue and a consumer thread)",
        FLAT_TYPES,
        _flat(1),
        mode="queue",
    ),
    Workload(
        "async",
        "10 classes, 1 async handler each, dispatch_batch_async",
        FLAT_TYPES,
        _flat(1),
        mode="async",
    ),
    Workload(
        "decode",
        "10 classes, 1 handler each, decode msgpack buffers of 1,000 events, dispatch each batch",
        FLAT_TYPES,
        _flat(1),
        mode="decode",
    ),
)


def by_name(names: Sequence[str]) -> list[Workload]:
    """The workloads named, in registry order; ValueError naming any unknown name."""
    known = {workload.name: workload for workload in WORKLOADS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [workload for workload in WORKLOADS if workload.name in names]

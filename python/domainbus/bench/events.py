"""The event classes the benchmark workloads publish.

`FLAT_TYPES`: ten unrelated `DomainEvent` subclasses (handlers registered on each).
`HIERARCHY_ROOT`/`HIERARCHY_TYPES`: a six-level chain of base classes under ten leaf classes,
so that handlers registered on the bases are found only by walking the MRO.
"""

from __future__ import annotations

from typing import cast

from domainbus.events import DomainEvent

__all__ = ["FLAT_TYPES", "HIERARCHY_BASES", "HIERARCHY_TYPES", "BenchEvent"]

TYPE_COUNT = 10
HIERARCHY_DEPTH = 6


class BenchEvent(DomainEvent):
    """Base of every benchmark event: a user id and a sequence number, like a small real event."""

    user_id: str
    sequence: int


def _subclass(name: str, base: type[BenchEvent]) -> type[BenchEvent]:
    # msgspec tags each Struct subclass with its name, so names stay unique across the module.
    return cast("type[BenchEvent]", type(name, (base,), {"__module__": __name__}))


FLAT_TYPES: tuple[type[BenchEvent], ...] = tuple(
    _subclass(f"Flat{i}", BenchEvent) for i in range(TYPE_COUNT)
)


def _chain(depth: int) -> tuple[type[BenchEvent], ...]:
    bases = [_subclass("Level0", BenchEvent)]
    for level in range(1, depth):
        bases.append(_subclass(f"Level{level}", bases[-1]))
    return tuple(bases)


HIERARCHY_BASES: tuple[type[BenchEvent], ...] = _chain(HIERARCHY_DEPTH)
HIERARCHY_TYPES: tuple[type[BenchEvent], ...] = tuple(
    _subclass(f"Leaf{i}", HIERARCHY_BASES[-1]) for i in range(TYPE_COUNT)
)

"""`AggregateRoot`: a mixin that lets an aggregate collect the domain events it causes.

An aggregate records events while it changes (`record`) and a unit of work takes them once
the change is saved (`pull_events`), so the events leave only with the state that caused them.

The mixin adds one slot and nothing else (no `__init__`, no fields), so it works on:

- plain classes, with or without `__slots__` of their own;
- dataclasses, including `slots=True` and `frozen=True` ones;
- the user's own `msgspec.Struct`s, including `frozen=True`, `array_like=True` and
  `gc=False` ones (list the mixin first: `class Order(AggregateRoot, msgspec.Struct)`).

The pending events are not fields: encoding, equality, hashing and `repr` ignore them, and
recording works on frozen objects because the slot is written through its descriptor.

Not supported: a base class that already has a non-empty `__slots__` layout of its own other
than `msgspec.Struct` (Python raises "instance lay-out conflict" when the class is defined).
Copies and pickles of plain classes and ordinary dataclasses carry their own list of the
pending events; those of msgspec Structs and `slots=True` dataclasses start with none, like the
results of `dataclasses.replace` and `msgspec.structs.replace`.
One caveat on msgspec Structs: msgspec's garbage collector support does not visit mixin
slots, so an event that refers back to its own aggregate keeps both alive until
`pull_events()` runs (the unit of work always runs it); plain reference counting is unaffected.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AggregateRoot"]


class AggregateRoot:
    """Mixin: `record(event)` while changing, `pull_events()` to take the events, in order."""

    __slots__ = ("_domainbus_events",)

    def record(self, event: object) -> None:
        """Append `event` to this aggregate's pending events (recording order is kept)."""
        if isinstance(event, type):
            raise TypeError(f"record() needs an event instance, not the class {event.__qualname__}")
        try:
            events: list[object] = _SLOT.__get__(self, type(self))
        except AttributeError:  # first event of this object: the slot is still unset
            events = []
            _SLOT.__set__(self, events)
        events.append(event)

    def pull_events(self) -> list[Any]:
        """Return the pending events in recording order and forget them (a new list each call)."""
        try:
            events: list[Any] = _SLOT.__get__(self, type(self))
        except AttributeError:
            return []
        if not events:
            return []
        _SLOT.__set__(self, [])
        return events

    def __getstate__(self) -> object:
        """Default state, with a copy of the pending list so copies never share it."""
        state = super().__getstate__()
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            slots = state[1]
            if isinstance(slots.get("_domainbus_events"), list):
                state = (state[0], {**slots, "_domainbus_events": list(slots["_domainbus_events"])})
        return state


# The slot's member descriptor: reading and writing through it bypasses a frozen class's
# __setattr__ (dataclass or msgspec), which is what lets frozen aggregates record events.
_SLOT: Any = AggregateRoot.__dict__["_domainbus_events"]

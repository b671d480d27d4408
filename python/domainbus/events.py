"""`DomainEvent`: the immutable, taggable base class of every event.

Events are `msgspec.Struct`s: cheap to build, frozen, and tagged with their class name (or the
`tag=` a subclass sets), so a list of mixed events encodes and decodes as a tagged union. Every
event carries a time-ordered `event_id` (UUIDv7) and a UTC `occurred_on`, both keyword-only; a
subclass's own fields are keyword-only when it passes `kw_only=True` (msgspec applies it class
by class, and a metaclass forcing it would cost msgspec's fast construction path, about 120 ns
an event).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import dataclass_transform

import msgspec

from domainbus._ids import new_event_id, utc_now

__all__ = ["DomainEvent"]


# msgspec makes subclasses of a frozen Struct frozen; this tells type checkers so too.
@dataclass_transform(frozen_default=True, field_specifiers=(msgspec.field,))
class DomainEvent(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Base class of domain events.

    Subclass it and declare fields the msgspec way::

        class UserRegistered(DomainEvent):
            user_id: str
            username: str
            email: str

    `event_id` and `occurred_on` are keyword-only and filled in when not given. msgspec applies
    `kw_only` per class: pass `kw_only=True` in a subclass (`class UserRegistered(DomainEvent,
    kw_only=True)`) to make its own fields keyword-only too; without it they may be positional.
    Handlers registered for `DomainEvent` itself see every event that subclasses it.
    """

    event_id: uuid.UUID = msgspec.field(default_factory=new_event_id)
    occurred_on: datetime = msgspec.field(default_factory=utc_now)

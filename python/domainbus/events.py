"""`DomainEvent`: the immutable, taggable base class of every event.

Events are `msgspec.Struct`s: cheap to build, frozen, keyword-only, and tagged with their class
name (or the `tag=` a subclass sets), so a list of mixed events encodes and decodes as a tagged
union. Every event carries a time-ordered `event_id` (UUIDv7) and a UTC `occurred_on`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, dataclass_transform

import msgspec

from domainbus._ids import new_event_id, utc_now

__all__ = ["DomainEvent"]


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class _EventMeta(msgspec.StructMeta):
    """Makes subclasses keyword-only too (msgspec's `kw_only` covers a class's own fields).

    `dataclass_transform` tells type checkers what msgspec does at run time: subclasses of a
    frozen struct are frozen, and (thanks to this metaclass) keyword-only.
    """

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **options: Any
    ) -> Any:
        options.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **options)


class DomainEvent(msgspec.Struct, metaclass=_EventMeta, frozen=True, kw_only=True, tag=True):
    """Base class of domain events.

    Subclass it and declare fields the msgspec way::

        class UserRegistered(DomainEvent):
            user_id: str
            username: str
            email: str

    Fields are keyword-only in subclasses too. `event_id` and `occurred_on` are filled in
    when not given. Handlers registered for
    `DomainEvent` itself see every event that subclasses it.
    """

    event_id: uuid.UUID = msgspec.field(default_factory=new_event_id)
    occurred_on: datetime = msgspec.field(default_factory=utc_now)

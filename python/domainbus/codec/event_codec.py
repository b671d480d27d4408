"""`EventCodec`: msgpack and JSON for a fixed set of event types, with versioned upcasting.

The tag of each event class (its name unless the class sets `tag=`) selects the type when
decoding, so a codec is a tagged union of its classes. Each format uses one msgspec Encoder and
one Decoder per shape (single event, list of events), built once.

Schema evolution: a field added with a default needs nothing (old records decode, the default
fills it in); a breaking change bumps the version in the tag ("UserRegistered.v2") and old
records are upcast by the functions registered with `@codec.upcaster(name, from_version=N)`
(see `domainbus.codec.versions`). Records of the current version never pay for upcasting.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType

from domainbus.codec.invalid import OnInvalid
from domainbus.codec.records import Records
from domainbus.codec.streams import BatchReader, Source, StreamWriter, iter_indexed_batches
from domainbus.codec.versions import Tag, U, Upcaster, split_tag
from domainbus.events import DomainEvent

__all__ = ["EventCodec", "Upcaster", "split_tag"]


class EventCodec:
    """Encodes and decodes the given `DomainEvent` subclasses as msgpack and JSON.

    Decoding raises `DecodeError` with the reason: "truncated", "garbage", "unknown-tag",
    "invalid-field" or "upcast-failed". Encoding an event of a class the codec does not know
    raises TypeError, so nothing is written that this codec could not read back (one caveat:
    JSON has no NaN or infinity; msgspec writes them as null, which then fails to decode as
    a float field). A codec may be shared by threads; register upcasters before using it.
    """

    def __init__(self, *event_types: type[DomainEvent]) -> None:
        if not event_types:
            raise ValueError("EventCodec needs at least one DomainEvent subclass")
        types = tuple(dict.fromkeys(event_types))
        for event_type in types:
            if not (isinstance(event_type, type) and issubclass(event_type, DomainEvent)):
                raise TypeError(f"not a DomainEvent subclass: {event_type!r}")
            if event_type is DomainEvent:
                raise TypeError("EventCodec takes DomainEvent subclasses, not DomainEvent itself")
        self.event_types: tuple[type[DomainEvent], ...] = types
        self.tag_field: str = _tag_field(types)
        self.records = Records(types, self.tag_field)
        """The record-level encoders and decoders the stream readers and writers use."""
        self._known = frozenset(types)
        self._encode_msgpack = self.records.msgpack_encoder.encode

    @classmethod
    def from_modules(cls, *modules: ModuleType | str) -> EventCodec:
        """A codec for every concrete DomainEvent subclass defined in the given modules."""
        found: list[type[DomainEvent]] = []
        for module in modules:
            mod = importlib.import_module(module) if isinstance(module, str) else module
            found.extend(
                value
                for value in vars(mod).values()
                if isinstance(value, type)
                and issubclass(value, DomainEvent)
                and value is not DomainEvent
                and value.__module__ == mod.__name__
                and not inspect.isabstract(value)
            )
        if not found:
            names = ", ".join(m if isinstance(m, str) else m.__name__ for m in modules)
            raise ValueError(f"no DomainEvent subclasses defined in {names or 'no modules'}")
        return cls(*found)

    def __repr__(self) -> str:
        names = ", ".join(t.__qualname__ for t in self.event_types)
        return f"EventCodec({names})"

    def upcaster(self, name: Tag, *, from_version: int) -> Callable[[U], U]:
        """Register `fn(fields) -> fields` turning a version-`from_version` record of the event
        named `name` into a version-`from_version + 1` one (the field mapping, tag excluded).

        ValueError if this codec has no event called `name`, if `from_version` is not below
        its current version, or if that step already has an upcaster.
        """
        return self.records.versions.upcaster(name, from_version)

    # -- single events and batches ----------------------------------------------------------

    def encode(self, event: DomainEvent) -> bytes:
        """One event as msgpack."""
        if type(event) not in self._known:
            self.records.check_types((event,))
        return self._encode_msgpack(event)

    def decode(self, data: bytes) -> DomainEvent:
        """One msgpack event; DecodeError when it is not one of this codec's events."""
        return self.records.msgpack_record(data)

    def encode_batch(self, events: Iterable[DomainEvent]) -> bytes:
        """A msgpack array of events."""
        events = events if isinstance(events, list | tuple) else list(events)
        self.records.check_types(events)
        return self.records.msgpack_encoder.encode(events)

    def decode_batch(self, data: bytes) -> list[DomainEvent]:
        """A msgpack array of events; DecodeError (with `index`) at the first bad record."""
        return self.records.msgpack_records(data)

    def encode_json(self, event: DomainEvent) -> bytes:
        """One event as a JSON object."""
        self.records.check_type(event)
        return self.records.json_encoder.encode(event)

    def decode_json(self, data: bytes | str) -> DomainEvent:
        """One JSON event; DecodeError when it is not one of this codec's events."""
        return self.records.json_record(data)

    # -- streams ---------------------------------------------------------------------------

    def iter_batches(
        self,
        source: Source,
        batch_size: int = 1024,
        format: str | None = None,
        *,
        start_at: int = 0,
        on_invalid: OnInvalid = None,
    ) -> Iterator[list[DomainEvent]]:
        """Lists of up to `batch_size` events read from a path or binary file, in order.

        `format` is "msgpack" or "jsonl" (None: detected from the msgpack header). Skips the
        first `start_at` events. A bad record raises DecodeError, or with `on_invalid` is
        handed to `on_invalid(error, raw_bytes)` and reading goes on.
        """
        batches = self.iter_indexed_batches(
            source, batch_size, format, start_at=start_at, on_invalid=on_invalid
        )
        return (batch.events for batch in batches)

    def iter_indexed_batches(
        self,
        source: Source,
        batch_size: int = 1024,
        format: str | None = None,
        *,
        start_at: int = 0,
        on_invalid: OnInvalid = None,
    ) -> BatchReader:
        """Like `iter_batches`, yielding `Batch(start, events)`: `start` is the stream index of
        `events[0]`, and a batch never spans an invalid record."""
        return iter_indexed_batches(
            self.records, source, batch_size, format, start_at=start_at, on_invalid=on_invalid
        )

    def write(
        self,
        target: Source,
        events: Iterable[DomainEvent],
        format: str | None = "msgpack",
        batch_size: int = 1024,
    ) -> int:
        """Write `events` as a whole stream to a path or binary file; returns the count.

        `format=None` picks "jsonl" for .jsonl/.ndjson paths, else "msgpack".
        """
        with self.writer(target, format, batch_size) as writer:
            writer.write(events)
        return writer.count

    def writer(
        self, target: Source, format: str | None = "msgpack", batch_size: int = 1024
    ) -> StreamWriter:
        """A `StreamWriter` for appending events in several calls (a context manager)."""
        return StreamWriter(self.records, target, format, batch_size)


def _tag_field(types: tuple[type[DomainEvent], ...]) -> str:
    fields = {t.__struct_config__.tag_field for t in types}
    if len(fields) != 1 or None in fields:
        raise ValueError(f"event types must share one tag field, found {sorted(map(str, fields))}")
    return fields.pop()  # type: ignore[return-value]

"""`EventCodec`: msgpack and JSON for a fixed set of event types, with versioned upcasting.

The tag of each event class (its name unless the class sets `tag=`) selects the type when
decoding, so a codec is a tagged union of its classes. Each format uses one msgspec Encoder and
one Decoder per shape (single event, list of events), built once.

Schema evolution:

- A field added with a default needs nothing: old records decode, the default fills it in.
- A breaking change bumps the version, which lives in the tag: `"UserRegistered.v2"` is version
  2 of the event named "UserRegistered"; a tag without a `.vN` suffix is version 1. Old records
  then carry a tag that no current class has, so the fast typed decode rejects them instead of
  misreading them; only those records take the slow path: decoded to a raw mapping, passed
  through the upcasters registered with `@codec.upcaster(name, from_version=N)` (each turns a
  version-N field mapping into a version-N+1 one), then converted to the current class.
  Records of the current version never pay for the upcasters.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any, TypeVar, Union

import msgspec

from domainbus.codec.frames import OnInvalid
from domainbus.codec.invalid import InvalidRecord, malformed
from domainbus.codec.streams import Batch, Source, StreamWriter, iter_indexed_batches
from domainbus.events import DomainEvent

__all__ = ["EventCodec", "Upcaster", "split_tag"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcaster)
Tag = str | int

_VERSIONED_TAG = re.compile(r"(?P<name>.+)\.v(?P<version>[0-9]+)")


def split_tag(tag: Tag) -> tuple[Tag, int]:
    """`(name, version)` of a tag: "UserRegistered.v2" -> ("UserRegistered", 2); no suffix: 1."""
    if isinstance(tag, str) and (match := _VERSIONED_TAG.fullmatch(tag)):
        return match["name"], int(match["version"])
    return tag, 1


class EventCodec:
    """Encodes and decodes the given `DomainEvent` subclasses as msgpack and JSON.

    Decoding raises `DecodeError` with the reason: "truncated", "garbage", "unknown-tag",
    "invalid-field" or "upcast-failed". Encoding an event of a class the codec does not know
    raises TypeError, so nothing is written that this codec could not read back.
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
        self._type_set = frozenset(types)
        self._by_tag: dict[Tag, type[DomainEvent]] = {}
        self._current: dict[Tag, tuple[int, type[DomainEvent]]] = {}
        for event_type in types:
            self._add_tag(event_type)
        self._upcasters: dict[tuple[Tag, int], Upcaster] = {}

        union: Any = Union[types]  # noqa: UP007 (a runtime tuple of types)
        self._msgpack_encoder = msgspec.msgpack.Encoder()
        self._msgpack_decoder: msgspec.msgpack.Decoder[DomainEvent] = msgspec.msgpack.Decoder(union)
        self._msgpack_batch_decoder: msgspec.msgpack.Decoder[list[DomainEvent]] = (
            msgspec.msgpack.Decoder(list[union])
        )
        self._msgpack_raw_decoder = msgspec.msgpack.Decoder()
        self._msgpack_split_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
        self._json_encoder = msgspec.json.Encoder()
        self._json_decoder: msgspec.json.Decoder[DomainEvent] = msgspec.json.Decoder(union)
        self._json_batch_decoder: msgspec.json.Decoder[list[DomainEvent]] = msgspec.json.Decoder(
            list[union]
        )
        self._json_raw_decoder = msgspec.json.Decoder()

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

    def _add_tag(self, event_type: type[DomainEvent]) -> None:
        tag: Tag = event_type.__struct_config__.tag  # type: ignore[assignment]
        if tag in self._by_tag:
            other = self._by_tag[tag].__qualname__
            raise ValueError(f"{event_type.__qualname__} and {other} share the tag {tag!r}")
        name, version = split_tag(tag)
        if name in self._current:
            other = self._current[name][1].__qualname__
            raise ValueError(
                f"{event_type.__qualname__} and {other} are both versions of {name!r}; "
                "a codec decodes old versions with upcasters, keep only the current class"
            )
        self._by_tag[tag] = event_type
        self._current[name] = (version, event_type)

    # -- upcasters --------------------------------------------------------------------------

    def upcaster(self, name: Tag, *, from_version: int) -> Callable[[U], U]:
        """Register `fn(fields) -> fields` turning a version-`from_version` record of the event
        named `name` into a version-`from_version + 1` one (the field mapping, tag excluded)."""
        if name not in self._current:
            raise ValueError(f"no event named {name!r} in {self!r}")
        current = self._current[name][0]
        if not (isinstance(from_version, int) and 1 <= from_version < current):
            raise ValueError(
                f"from_version must be an int from 1 to {current - 1} for {name!r} "
                f"(its current version is {current}), not {from_version!r}"
            )
        if (name, from_version) in self._upcasters:
            raise ValueError(f"an upcaster for {name!r} from version {from_version} exists")

        def register(fn: U) -> U:
            if not callable(fn):
                raise TypeError(f"an upcaster must be callable, not {type(fn).__qualname__}")
            self._upcasters[name, from_version] = fn
            return fn

        return register

    # -- single events and batches ----------------------------------------------------------

    def encode(self, event: DomainEvent) -> bytes:
        """One event as msgpack."""
        self._check_types((event,))
        return self._msgpack_encoder.encode(event)

    def decode(self, data: bytes) -> DomainEvent:
        """One msgpack event; DecodeError when it is not one of this codec's events."""
        try:
            return self.decode_msgpack_record(data)
        except InvalidRecord as invalid:
            raise invalid.at() from None

    def encode_batch(self, events: Iterable[DomainEvent]) -> bytes:
        """A msgpack array of events."""
        events = events if isinstance(events, list | tuple) else list(events)
        self._check_types(events)
        return self._msgpack_encoder.encode(events)

    def decode_batch(self, data: bytes) -> list[DomainEvent]:
        """A msgpack array of events; DecodeError (with `index`) at the first bad record."""
        try:
            return self._msgpack_batch_decoder.decode(data)
        except msgspec.MsgspecError:
            pass
        try:
            records = self.split_msgpack_array(data)
            events = []
            for index, record in enumerate(records):
                try:
                    events.append(self.decode_msgpack_record(record))
                except InvalidRecord as invalid:
                    raise invalid.at(index=index) from None
        except InvalidRecord as invalid:
            raise invalid.at() from None
        return events

    def encode_json(self, event: DomainEvent) -> bytes:
        """One event as a JSON object."""
        self._check_types((event,))
        return self._json_encoder.encode(event)

    def decode_json(self, data: bytes | str) -> DomainEvent:
        """One JSON event; DecodeError when it is not one of this codec's events."""
        try:
            return self.decode_json_record(data)
        except InvalidRecord as invalid:
            raise invalid.at() from None

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
    ) -> Iterator[Batch]:
        """Like `iter_batches`, yielding `Batch(start, events)`: `start` is the stream index of
        `events[0]`, and a batch never spans an invalid record."""
        return iter_indexed_batches(
            self, source, batch_size, format, start_at=start_at, on_invalid=on_invalid
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
        return StreamWriter(self, target, format, batch_size)

    def _check_types(self, events: Iterable[object]) -> None:
        unknown = set(map(type, events)) - self._type_set
        if unknown:
            names = ", ".join(sorted(t.__qualname__ for t in unknown))
            raise TypeError(f"{self!r} cannot encode events of type {names}")

    # -- record-level decoding used by the stream readers -----------------------------------

    def split_msgpack_array(self, data: bytes) -> list[msgspec.Raw]:
        """The records of a msgpack array, undecoded; InvalidRecord if it is not an array."""
        try:
            return self._msgpack_split_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise malformed(exc) from None
        except msgspec.ValidationError as exc:
            raise InvalidRecord("garbage", f"expected an array of events: {exc}") from None

    def decode_msgpack_record(self, data: bytes | msgspec.Raw) -> DomainEvent:
        """One msgpack record: the fast typed decode, else upcasting; or InvalidRecord."""
        try:
            return self._msgpack_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            typed_error = exc
        try:
            mapping = self._msgpack_raw_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise malformed(exc) from None
        return self._upcast(mapping, typed_error)

    def decode_json_record(self, data: bytes | str) -> DomainEvent:
        """One JSON record: the fast typed decode, else upcasting; or InvalidRecord."""
        try:
            return self._json_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            typed_error = exc
        try:
            mapping = self._json_raw_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise malformed(exc) from None
        return self._upcast(mapping, typed_error)

    def _upcast(self, mapping: object, typed_error: Exception) -> DomainEvent:
        """Upcast an old-version raw record, or explain why the typed decode failed."""
        if not isinstance(mapping, dict):
            raise InvalidRecord("garbage", f"expected an event object, got {_kind(mapping)}")
        tag = mapping.get(self.tag_field)
        if not isinstance(tag, str | int):
            raise InvalidRecord("unknown-tag", f"record has no {self.tag_field!r} field")
        if tag in self._by_tag:
            raise InvalidRecord("invalid-field", str(typed_error))
        name, version = split_tag(tag)
        current_version, event_type = self._current.get(name, (0, DomainEvent))
        if version >= current_version:
            raise InvalidRecord("unknown-tag", f"unknown event tag {tag!r} (not in {self!r})")
        fields = {key: value for key, value in mapping.items() if key != self.tag_field}
        for step in range(version, current_version):
            fields = self._upcast_step(name, step, fields)
        fields[self.tag_field] = event_type.__struct_config__.tag
        try:
            return msgspec.convert(fields, event_type)
        except msgspec.ValidationError as exc:
            raise InvalidRecord(
                "upcast-failed",
                f"{name!r} upcast from version {version} does not fit "
                f"{event_type.__qualname__}: {exc}",
            ) from None

    def _upcast_step(self, name: Tag, version: int, fields: dict[str, Any]) -> dict[str, Any]:
        upcaster = self._upcasters.get((name, version))
        if upcaster is None:
            raise InvalidRecord(
                "upcast-failed", f"no upcaster registered for {name!r} from version {version}"
            )
        try:
            result = upcaster(fields)
        except Exception as exc:
            raise InvalidRecord(
                "upcast-failed", f"upcaster for {name!r} from version {version} raised {exc!r}"
            ) from exc
        if not isinstance(result, dict):
            raise InvalidRecord(
                "upcast-failed",
                f"upcaster for {name!r} from version {version} returned {_kind(result)}, "
                "not a dict",
            )
        return result


def _tag_field(types: tuple[type[DomainEvent], ...]) -> str:
    fields = {t.__struct_config__.tag_field for t in types}
    if len(fields) != 1 or None in fields:
        raise ValueError(f"event types must share one tag field, found {sorted(map(str, fields))}")
    return fields.pop()  # type: ignore[return-value]


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__

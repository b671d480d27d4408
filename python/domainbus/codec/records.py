"""`Records`: the msgspec encoders and decoders of one set of event types, record by record.

`EventCodec` builds one and hands it to the stream readers and writers, which use only this
public surface (the readers sit below `EventCodec` and never import it). Every decoding
method raises `DecodeError` (without a position: the reader adds it) and nothing else, whatever
the bytes: malformed input, records nested too deep, tags that are not events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Union

import msgspec

from domainbus.codec.invalid import malformed, too_deep
from domainbus.codec.versions import Versions
from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

__all__ = ["Records"]

# What msgspec's typed decoders raise on bad input: their own errors, and RecursionError for
# data nested deeper than the interpreter allows.
_REJECTED = (msgspec.MsgspecError, RecursionError)


class Records:
    """Encoders and decoders for `event_types` (a tagged union), each built once."""

    def __init__(self, event_types: tuple[type[DomainEvent], ...], tag_field: str) -> None:
        self.event_types = event_types
        self.versions = Versions(event_types, tag_field)
        self._type_set = frozenset(event_types)
        union: Any = Union[event_types]  # noqa: UP007 (a runtime tuple of types)
        self.msgpack_encoder = msgspec.msgpack.Encoder()
        self.json_encoder = msgspec.json.Encoder()
        self._msgpack_one: msgspec.msgpack.Decoder[DomainEvent] = msgspec.msgpack.Decoder(union)
        self._msgpack_list: msgspec.msgpack.Decoder[list[DomainEvent]] = msgspec.msgpack.Decoder(
            list[union]
        )
        self._msgpack_raw = msgspec.msgpack.Decoder()
        self._msgpack_split = msgspec.msgpack.Decoder(list[msgspec.Raw])
        self._json_one: msgspec.json.Decoder[DomainEvent] = msgspec.json.Decoder(union)
        self._json_raw = msgspec.json.Decoder()

    def check_type(self, event: object) -> None:
        """`check_types` for one event, without building sets (one per unit of work)."""
        if type(event) not in self._type_set:
            self.check_types((event,))

    def check_types(self, events: Iterable[object]) -> None:
        """TypeError unless every event is of one of this codec's types."""
        unknown = set(map(type, events)) - self._type_set
        if unknown:
            names = ", ".join(sorted(t.__qualname__ for t in unknown))
            known = ", ".join(t.__qualname__ for t in self.event_types)
            raise TypeError(f"EventCodec({known}) cannot encode events of type {names}")

    # -- fast paths: a whole frame or chunk at once, None when any record needs a closer look

    def msgpack_list(self, data: bytes) -> list[DomainEvent] | None:
        """A msgpack array of current-version events, or None (decode it record by record)."""
        try:
            return self._msgpack_list.decode(data)
        except _REJECTED:
            return None

    def json_lines(self, data: bytes, lines: int) -> list[DomainEvent] | None:
        """`lines` JSON lines of current-version events, one per line, or None (go line by
        line). msgspec counts values, not lines: a count that differs means a line holds two
        values, or one value spans lines, and each line must then be judged on its own."""
        try:
            events = self._json_one.decode_lines(data)
        except _REJECTED:
            return None
        return events if len(events) == lines else None

    # -- one record ------------------------------------------------------------------------

    def split_msgpack_array(self, data: bytes) -> list[msgspec.Raw]:
        """The records of a msgpack array, undecoded."""
        try:
            return self._msgpack_split.decode(data)
        except msgspec.DecodeError as exc:
            raise malformed(exc) from None
        except msgspec.ValidationError as exc:
            raise DecodeError("garbage", f"expected an array of events: {exc}") from None
        except RecursionError:
            raise too_deep() from None

    def msgpack_record(self, data: bytes | msgspec.Raw) -> DomainEvent:
        """One msgpack event: the fast typed decode, else upcasting."""
        return self._record(self._msgpack_one, self._msgpack_raw, data)

    def json_record(self, data: bytes | str) -> DomainEvent:
        """One JSON event: the fast typed decode, else upcasting."""
        return self._record(self._json_one, self._json_raw, data)

    def msgpack_records(self, data: bytes) -> list[DomainEvent]:
        """A msgpack array of events; DecodeError (with `index`) at the first bad record."""
        events = self.msgpack_list(data)
        if events is not None:
            return events
        events = []
        for index, record in enumerate(self.split_msgpack_array(data)):
            try:
                events.append(self.msgpack_record(record))
            except DecodeError as error:
                raise DecodeError(error.reason, error.detail, index=index) from None
        return events

    def _record(self, typed: Any, raw: Any, data: Any) -> DomainEvent:
        try:
            event: DomainEvent = typed.decode(data)
            return event
        except _REJECTED as exc:
            typed_error = exc
        try:
            mapping = raw.decode(data)
        except msgspec.DecodeError as exc:
            raise malformed(exc) from None
        except RecursionError:
            raise too_deep() from None
        return self.versions.resolve(mapping, typed_error)

    # -- writing ---------------------------------------------------------------------------

    def json_lines_bytes(self, events: Sequence[DomainEvent]) -> bytes:
        """Events as JSON lines (already type-checked)."""
        return self.json_encoder.encode_lines(events)

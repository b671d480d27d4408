"""The event store's interface (`EventStore`), its records, and the logic both backends share.

A stream is the history of one aggregate: events numbered by version from 1, so a stream's
version is its number of events. Every event also has a global `position`, unique across
streams; `read_all` yields events in one global order that a catch-up reader can follow
without ever skipping one (each backend says how it keeps that promise).

Payloads are the codec's msgpack encoding of each event. Reading decodes a whole page of rows
with one call (the rows' bytes joined into one msgpack array): only a page that holds an old
version (upcast) or a bad row falls back to decoding row by row.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from domainbus.codec import EventCodec
from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "EventStore",
    "Meta",
    "Page",
    "Snapshot",
    "StoredDecodeError",
    "StoredEvent",
    "check_append",
    "check_page",
    "check_range",
    "decode_joined",
    "decode_rows",
    "page_to_stored",
]

DEFAULT_PAGE_SIZE = 1000
_MAX_VERSION = 2**62  # far beyond any stream; keeps versions inside a signed 64-bit column


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: its global `position`, its stream and version, the decoded event."""

    position: int
    stream_id: str
    version: int
    event: DomainEvent


Meta = tuple[list[str], list[int], list["str | None"]]


class Page:
    """Rows read together, in order: `positions` and `events` (decoded with one call), and
    the parallel lists `stream_ids`, `versions` and `traceparents` (the W3C trace context of
    the code that appended each event, None where tracing was off). A store may read those
    three only when first asked for (`load`: a projection runner needs none of them, or only
    the traceparents when tracing is on)."""

    __slots__ = ("_load", "_stream_ids", "_traceparents", "_versions", "events", "positions")

    def __init__(
        self,
        positions: list[int],
        stream_ids: list[str] | None,
        versions: list[int] | None,
        events: list[DomainEvent],
        load: Callable[[], Meta] | None = None,
        traceparents: list[str | None] | None = None,
    ) -> None:
        self.positions = positions
        self.events = events
        self._stream_ids, self._versions, self._traceparents = stream_ids, versions, traceparents
        self._load = load

    def _load_missing(self) -> None:
        if self._load is None:
            raise ValueError("a page without its stream ids, versions or traceparents")
        stream_ids, versions, traceparents = self._load()
        self._load = None
        if self._stream_ids is None or self._versions is None:
            self._stream_ids, self._versions = stream_ids, versions
        if self._traceparents is None:
            self._traceparents = traceparents

    @property
    def stream_ids(self) -> list[str]:
        if self._stream_ids is None:
            self._load_missing()
        return self._stream_ids  # type: ignore[return-value]

    @property
    def versions(self) -> list[int]:
        if self._versions is None:
            self._load_missing()
        return self._versions  # type: ignore[return-value]

    @property
    def traceparents(self) -> list[str | None]:
        if self._traceparents is None:
            self._load_missing()
        return self._traceparents  # type: ignore[return-value]

    @property
    def last_position(self) -> int:
        return self.positions[-1]

    def __repr__(self) -> str:
        if not self.events:
            return "<Page of 0 events>"
        first, last = self.positions[0], self.positions[-1]
        return f"<Page of {len(self.events)} events, positions {first}..{last}>"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's saved state at `version` of its stream, written by `topic` at
    `class_version` (a snapshot written by another class or class version is ignored)."""

    stream_id: str
    version: int
    topic: str
    class_version: int
    state: bytes


class StoredDecodeError(DecodeError):
    """A stored event that cannot be decoded; `stream_id`, `version` and `position` say which."""

    def __init__(
        self, reason: str, detail: str, *, stream_id: str, version: int, position: int
    ) -> None:
        super().__init__(reason, detail, source=f"stream {stream_id!r} version {version}")
        self.stream_id = stream_id
        self.version = version
        self.position = position

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_stored_error, (self.reason, self.detail, self.stream_id, self.version,
                                        self.position))  # fmt: skip


def _rebuild_stored_error(
    reason: str, detail: str, stream_id: str, version: int, position: int
) -> StoredDecodeError:
    return StoredDecodeError(
        reason, detail, stream_id=stream_id, version=version, position=position
    )


class EventStore(Protocol):
    """What aggregates, projections and the `replay` command need from a store.

    `append` runs in the caller's transaction when the store's connection has one open (then
    nothing is committed: the caller's commit stores the events with its own writes, its
    rollback drops them), else in a transaction of its own.
    """

    codec: EventCodec

    def append(
        self, stream_id: str, events: Sequence[DomainEvent], *, expected_version: int
    ) -> int:
        """Append `events` to the stream if its version is `expected_version` (0 for a new
        stream); returns the new version. `ConcurrencyError` when another writer got there
        first: nothing of this batch is written."""

    def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        """The stream's events with versions from `from_version` to `to_version` (inclusive)."""

    def read_stream_pages(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[list[DomainEvent]]:
        """The same events as decoded lists of up to `page_size` (what a rebuild folds)."""

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[StoredEvent]:
        """Every event after the one at position `after` (0: from the start), in the global
        order, at most `limit` of them."""

    def read_pages(
        self, after: int = 0, page_size: int = DEFAULT_PAGE_SIZE, limit: int | None = None
    ) -> Iterator[Page]:
        """`read_all` as pages (what a projection runner dispatches)."""

    def version(self, stream_id: str) -> int:
        """The stream's version: its number of events (0 if it has none)."""

    def count_after(self, after: int = 0) -> int:
        """How many events follow position `after` (for progress bars)."""

    def transaction(self) -> AbstractContextManager[None]:
        """A transaction on the store's connection (joins one that is open)."""

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot (in the current transaction, if one is open)."""

    def load_snapshot(self, stream_id: str, max_version: int | None = None) -> Snapshot | None:
        """The newest snapshot of the stream at a version <= `max_version`."""

    def close(self) -> None: ...


def check_append(stream_id: object, events: object, expected_version: object) -> list[Any]:
    """Validate `append`'s arguments; returns the events as a list."""
    if not isinstance(stream_id, str) or not stream_id:
        raise TypeError(f"stream_id must be a non-empty str, not {stream_id!r}")
    if type(expected_version) is not int or not 0 <= expected_version < _MAX_VERSION:
        raise TypeError(f"expected_version must be an int >= 0, not {expected_version!r}")
    if isinstance(events, DomainEvent) or not isinstance(events, Sequence | Iterator):
        raise TypeError(
            f"events must be a list of events, not {type(events).__qualname__}"
            + (" (wrap a single event in a list)" if isinstance(events, DomainEvent) else "")
        )
    batch = list(events)
    if not batch:
        raise ValueError(f"append to {stream_id!r} needs at least one event")
    return batch


def check_range(from_version: object, to_version: object) -> None:
    if type(from_version) is not int or from_version < 1:
        raise ValueError(f"from_version must be an int >= 1, not {from_version!r}")
    if to_version is not None and (type(to_version) is not int or to_version < 0):
        raise ValueError(f"to_version must be an int >= 0 or None, not {to_version!r}")


def check_page(after: object, page_size: object, limit: object) -> None:
    if type(after) is not int or after < 0:
        raise ValueError(f"after must be a position (an int >= 0), not {after!r}")
    if type(page_size) is not int or page_size < 1:
        raise ValueError(f"page_size must be an int >= 1, not {page_size!r}")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, not {limit!r}")


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of `count` items."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def decode_joined(codec: EventCodec, count: int, joined: bytes) -> list[DomainEvent] | None:
    """`count` payloads joined into one bytes object (as a page-at-once query returns them),
    decoded with one call (upcasting as needed); None when that fails or does not give
    `count` events: then decode the rows one by one (`decode_rows`) to name the bad one."""
    try:
        events = codec.decode_batch(_array_header(count) + joined)
    except DecodeError:
        return None
    return events if len(events) == count else None


def decode_rows(
    codec: EventCodec,
    payloads: Sequence[bytes],
    stream_ids: Sequence[str] | str,
    versions: Sequence[int] | int,
    positions: Sequence[int] | None = None,
) -> list[DomainEvent]:
    """Decode a page of payloads with one call; a bad row raises `StoredDecodeError` naming
    its stream and version (`stream_ids`/`versions` may be the one stream and first version
    of a page read from one stream)."""
    if not payloads:
        return []
    try:
        return codec.decode_batch(_array_header(len(payloads)) + b"".join(payloads))
    except DecodeError:
        pass  # find the bad row by decoding each on its own (rows never leak into each other)
    decode = codec.decode
    events = []
    for index, payload in enumerate(payloads):
        try:
            events.append(decode(payload))
        except DecodeError as exc:
            stream_id = stream_ids if isinstance(stream_ids, str) else stream_ids[index]
            version = versions + index if isinstance(versions, int) else versions[index]
            position = positions[index] if positions is not None else 0
            raise StoredDecodeError(
                exc.reason, exc.detail, stream_id=stream_id, version=version, position=position
            ) from None
    return events


def page_to_stored(page: Page) -> Iterator[StoredEvent]:
    """The events of a page as `StoredEvent`s."""
    return map(StoredEvent, page.positions, page.stream_ids, page.versions, page.events)

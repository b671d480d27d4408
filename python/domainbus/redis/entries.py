"""The stream entry format, the partition of a key, and the names of the keys in Redis.

One stream entry holds a frame of up to 1,000 events (never one entry per event: packing is
~30x faster), as a hash of small fields:

    format  b"domainbus-msgpack-1"  the version of this layout (readers reject others)
    count   b"1000"                 events in the frame (decimal)
    events  <msgpack array>         the codec's msgpack records (`EventCodec.encode_batch`)

    traceparent  b"00-<trace>-<span>-01"  optional: the W3C trace context of the code that
                                        published the frame (one per frame), written only
                                        when tracing is on (`domainbus.observe`)

Readers ignore fields they do not know, so frames with or without `traceparent` stay
compatible both ways.

Events are spread over `partitions` streams `{stream}:{p}` by a key (default: the event's
`aggregate_id` when it has one, else its `event_id`), so the events of one key stay in order:

    partition_of(key, partitions) == zlib.crc32(key_bytes(key)) % partitions

with `key_bytes`: str as UTF-8, bytes as is, uuid.UUID as its 16 bytes, int as its decimal
digits. CRC-32 is stable across processes and versions (Python's `hash()` is salted per
process, so it cannot be used). Keys of the other streams: `{stream}:meta` (a hash holding the
partition count, so publishers and workers cannot disagree), `{stream}:dead` (dead letters),
`{stream}:{group}:lease:{p}` and `{stream}:{group}:workers` (see `leases`).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "COUNT",
    "EVENTS",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_FRAME_EVENTS",
    "TRACEPARENT",
    "KeyFunction",
    "default_key",
    "key_bytes",
    "meta_key",
    "partition_key",
    "partition_of",
]

FORMAT = b"format"
COUNT = b"count"
EVENTS = b"events"
TRACEPARENT = b"traceparent"
FORMAT_VERSION = b"domainbus-msgpack-1"
MAX_FRAME_EVENTS = 1000

KeyFunction = Callable[[Any], object]


def default_key(event: Any) -> object:
    """The event's `aggregate_id` when it has one (not None), else its `event_id`."""
    key = getattr(event, "aggregate_id", None)
    return event.event_id if key is None else key


def key_bytes(key: object) -> bytes:
    """The bytes a key is hashed as; TypeError for keys of other types."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    if isinstance(key, uuid.UUID):
        return key.bytes
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise TypeError(
        f"a partition key must be str, bytes, uuid.UUID or int, not {type(key).__qualname__}"
    )


def partition_of(key: object, partitions: int) -> int:
    """The partition (0 to partitions - 1) of `key`: CRC-32 of its bytes, modulo."""
    return zlib.crc32(key_bytes(key)) % partitions


def partition_key(stream: str, partition: int) -> str:
    """The stream holding one partition: `{stream}:{partition}`."""
    return f"{stream}:{partition}"


def meta_key(stream: str) -> str:
    return f"{stream}:meta"


def check_name(what: str, value: object) -> str:
    """A non-empty str without spaces (stream, group and consumer names)."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a non-empty str without whitespace, not {value!r}")
    return value


def check_positive(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, not {value!r}")
    return value

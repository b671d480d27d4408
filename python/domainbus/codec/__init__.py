"""Event serialization: `EventCodec` (msgpack and JSON, batches, upcasters) and event streams.

Stream formats on disk (documented in their modules):

- "msgpack" (`domainbus.codec.frames`): a 20-byte header, then frames, each a 4-byte
  little-endian length and one msgpack array of up to `batch_size` events; read one frame at a
  time with one decode call per frame.
- "jsonl" (`domainbus.codec.jsonl`): one JSON event object per line.

Positions (`start_at`, `Batch.start`, `DecodeError.index`) count events from 0 across the whole
stream, so resuming after the event at position N is `start_at=N`.

Module layers, each importing only those before it: `versions`, `invalid` -> `records` (one
set of types' msgspec encoders and decoders) -> `frames`, `jsonl` (the readers) -> `streams`
(format detection, batching, writers, dead letters) -> `event_codec` (`EventCodec`).
"""

from domainbus.codec.event_codec import EventCodec, Upcaster, split_tag
from domainbus.codec.frames import MAGIC
from domainbus.codec.invalid import OnInvalid
from domainbus.codec.records import Records
from domainbus.codec.streams import (
    FORMATS,
    Batch,
    BatchReader,
    DeadLetterFile,
    Format,
    StreamWriter,
    detect_format,
)
from domainbus.errors import DecodeError

__all__ = [
    "FORMATS",
    "MAGIC",
    "Batch",
    "BatchReader",
    "DeadLetterFile",
    "DecodeError",
    "EventCodec",
    "Format",
    "OnInvalid",
    "Records",
    "StreamWriter",
    "Upcaster",
    "detect_format",
    "split_tag",
]

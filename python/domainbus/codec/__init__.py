"""Event serialization: `EventCodec` (msgpack and JSON, batches, upcasters) and event streams.

Stream formats on disk (documented in their modules):

- "msgpack" (`domainbus.codec.frames`): a 20-byte header, then frames, each a 4-byte
  little-endian length and one msgpack array of up to `batch_size` events; read one frame at a
  time with one decode call per frame.
- "jsonl" (`domainbus.codec.jsonl`): one JSON event object per line.

Positions (`start_at`, `Batch.start`, `DecodeError.index`) count events from 0 across the whole
stream, so resuming after the event at position N is `start_at=N`.
"""

from domainbus.codec.event_codec import EventCodec, Upcaster, split_tag
from domainbus.codec.frames import MAGIC, OnInvalid
from domainbus.codec.streams import FORMATS, Batch, DeadLetterFile, Format, StreamWriter
from domainbus.errors import DecodeError

__all__ = [
    "FORMATS",
    "MAGIC",
    "Batch",
    "DeadLetterFile",
    "DecodeError",
    "EventCodec",
    "Format",
    "OnInvalid",
    "StreamWriter",
    "Upcaster",
    "split_tag",
]

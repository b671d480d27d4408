"""The dead-letter stream `{stream}:dead`: entries a worker could not handle, kept for a person.

An entry goes there when it cannot be decoded (a malformed entry, or single records that fail
to decode: those records only, the rest of the frame is dispatched) or when its handlers failed
on `max_deliveries` deliveries (then, on the last delivery, the frame is dispatched event by
event and only the failing events go there). A dead letter is a stream entry of its own:

    format, count, events   a frame as in `entries`: the events (raw records) that failed,
                            or, for a malformed entry, its fields re-packed as msgpack
    source, partition       the partition stream it came from, and its number
    entry_id, index         the original entry's id, and the position of the first dead
                            event in its frame (-1: the whole entry)
    group, consumer         who gave up on it
    reason                  "undecodable", "malformed-entry" or "handler-failed"
    error                   the exception, as "TypeName: message"
    deliveries, failed_at   deliveries so far, and the Unix time

`DeadLetters.requeue(ids)` appends the frames back to their partition streams (at the end: a
requeued event comes after the events of its key published since) and deletes the dead
letters, in one MULTI. Writing a dead letter and acknowledging its original entry happen in one
MULTI for whole entries; for single events the dead letter is written before the entry is
acknowledged, so a crash in between can write it twice but never loses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis

from domainbus.redis.entries import COUNT, EVENTS, FORMAT, FORMAT_VERSION

__all__ = ["DeadLetters", "RedisDeadLetter", "dead_letter_fields", "frame_of_records"]

_ENCODER = msgspec.msgpack.Encoder()


def frame_of_records(records: Sequence[bytes | msgspec.Raw]) -> bytes:
    """A msgpack array of already-encoded records (no re-encoding)."""
    return _ENCODER.encode([r if isinstance(r, msgspec.Raw) else msgspec.Raw(r) for r in records])


def dead_letter_fields(
    *,
    frame: bytes,
    count: int,
    source: str,
    partition: int,
    entry_id: bytes,
    index: int,
    group: str,
    consumer: str,
    reason: str,
    error: str,
    deliveries: int,
) -> dict[bytes, bytes]:
    return {
        FORMAT: FORMAT_VERSION,
        COUNT: b"%d" % count,
        EVENTS: frame,
        b"source": source.encode(),
        b"partition": b"%d" % partition,
        b"entry_id": entry_id,
        b"index": b"%d" % index,
        b"group": group.encode(),
        b"consumer": consumer.encode(),
        b"reason": reason.encode(),
        b"error": error.encode(errors="replace"),
        b"deliveries": b"%d" % deliveries,
        b"failed_at": repr(time.time()).encode(),
    }


@dataclass(frozen=True, slots=True)
class RedisDeadLetter:
    """One entry of the dead-letter stream (see the module doc for the fields)."""

    id: str
    source: str
    partition: int
    entry_id: str
    index: int
    count: int
    reason: str
    error: str
    deliveries: int
    group: str
    consumer: str
    failed_at: float
    frame: bytes

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> RedisDeadLetter:
        text = {k.decode(): v.decode(errors="replace") for k, v in fields.items() if k != EVENTS}
        return cls(
            id=entry_id.decode(),
            source=text.get("source", ""),
            partition=int(text.get("partition", -1)),
            entry_id=text.get("entry_id", ""),
            index=int(text.get("index", -1)),
            count=int(text.get("count", 0)),
            reason=text.get("reason", ""),
            error=text.get("error", ""),
            deliveries=int(text.get("deliveries", 0)),
            group=text.get("group", ""),
            consumer=text.get("consumer", ""),
            failed_at=float(text.get("failed_at", 0.0)),
            frame=fields.get(EVENTS, b""),
        )


class DeadLetters:
    """List and requeue the dead letters of `stream` (the stream `{stream}:dead`)."""

    def __init__(self, client: redis.Redis, stream: str, *, key: str | None = None) -> None:
        self.client = client
        self.stream = stream
        self.key = key or f"{stream}:dead"

    def list(self, limit: int | None = None) -> list[RedisDeadLetter]:
        """The dead letters, oldest first (at most `limit`)."""
        found: Any = self.client.xrange(self.key, count=limit)
        return [RedisDeadLetter.from_entry(i, f) for i, f in found]

    def __len__(self) -> int:
        return int(self.client.xlen(self.key))

    def requeue(self, ids: Iterable[str] | None = None) -> int:
        """Append the frames of the dead letters `ids` (None: all) back to their partition
        streams and delete them; returns how many were requeued. KeyError for an unknown id."""
        wanted = None if ids is None else list(ids)
        letters = self.list()
        if wanted is not None:
            by_id = {letter.id: letter for letter in letters}
            missing = [i for i in wanted if i not in by_id]
            if missing:
                raise KeyError(f"no dead letter with id {', '.join(missing)} in {self.key!r}")
            letters = [by_id[i] for i in wanted]
        if not letters:
            return 0
        pipe = self.client.pipeline(transaction=True)
        for letter in letters:
            if not letter.source:
                raise ValueError(f"dead letter {letter.id} has no source stream")
            fields = {FORMAT: FORMAT_VERSION, COUNT: b"%d" % letter.count, EVENTS: letter.frame}
            pipe.xadd(letter.source, fields)  # type: ignore[arg-type]
            pipe.xdel(self.key, letter.id)
        pipe.execute()
        return len(letters)

"""`RedisPublisher`: events packed into frames and appended to partitioned Redis streams.

`publish_batch(events)` (also `dispatch_batch`, so `outbox.relay(publisher)` works) groups the
events by partition (`entries.partition_of` of their key), keeps their order within each
partition, packs each group into frames of up to `frame_size` events (one stream entry each,
see `entries`), and sends every XADD in one pipeline. It returns only after Redis acknowledged
every XADD; every reply is checked.

The relay's delivery contract: a normal return means every event was written. A `PublishError`
with an int `batch_index` means the events before `batch_index` (in the order given) were
written and the one at `batch_index` was not (a reply was an error: e.g. a stream key holding
another type); a `PublishError` without `batch_index` (the connection failed, so what Redis did
is unknown) means none counts as written. Events after `batch_index`, or of a failed call, may
have been written anyway: a retry writes them again. Delivery is at least once; consumers
dedupe with `idempotent` handlers.

`maxlen` trims each partition stream (approximately, `MAXLEN ~`) at every write: Redis drops the
oldest entries whether or not a group has read them, so set it well above any backlog or leave
it None (the default) and trim with XTRIM after the groups have caught up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from domainbus._trace import current_traceparent
from domainbus.codec import EventCodec
from domainbus.errors import DomainbusError
from domainbus.redis.connection import connect, stream_partitions
from domainbus.redis.entries import (
    COUNT,
    EVENTS,
    FORMAT,
    FORMAT_VERSION,
    MAX_FRAME_EVENTS,
    TRACEPARENT,
    KeyFunction,
    check_name,
    check_positive,
    partition_key,
)
from domainbus.redis.partitions import Partitioner

__all__ = ["PublishError", "RedisPublisher"]


class PublishError(DomainbusError):
    """Redis did not acknowledge every XADD of a batch. `batch_index` (set only when known):
    the events before it were written, the one at it was not."""

    batch_index: int

    def __init__(self, message: str, *, batch_index: int | None = None) -> None:
        super().__init__(message)
        if batch_index is not None:
            self.batch_index = batch_index


class RedisPublisher:
    """Appends events to `partitions` streams `{stream}:{p}`, framed, pipelined, in key order.

    `redis`: a URL or a `redis.Redis` client (bytes replies). `key(event)` picks the
    partition (default: `aggregate_id` if the event has one, else `event_id`); it must return
    str, bytes, uuid.UUID or int. The partition count is recorded in Redis on first use and
    every publisher and worker of the stream must agree with it.
    """

    def __init__(
        self,
        redis: Any,
        codec: EventCodec,
        *,
        stream: str = "domainbus",
        partitions: int = 16,
        key: KeyFunction | None = None,
        frame_size: int = MAX_FRAME_EVENTS,
        maxlen: int | None = None,
    ) -> None:
        if not isinstance(codec, EventCodec):
            raise TypeError(f"codec must be an EventCodec, not {type(codec).__qualname__}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable, not {type(key).__qualname__}")
        self.client = connect(redis)
        self.codec = codec
        self.stream = check_name("stream", stream)
        self.partitions = check_positive("partitions", partitions)
        self.frame_size = check_positive("frame_size", frame_size)
        self.maxlen = None if maxlen is None else check_positive("maxlen", maxlen)
        self._partitioner = Partitioner(partitions, key)
        self.key: KeyFunction = self._partitioner.key
        self._names = [partition_key(stream, p) for p in range(partitions)]
        self._checked = False

    def __repr__(self) -> str:
        return f"RedisPublisher(stream={self.stream!r}, partitions={self.partitions})"

    def publish(self, event: Any) -> int:
        """Publish one event (a frame of one: batch when you can)."""
        return self.publish_batch([event])

    def publish_batch(self, events: Iterable[Any]) -> int:
        """Write `events` to their partitions; returns how many, once Redis acknowledged all."""
        events = events if isinstance(events, list) else list(events)
        if not events:
            return 0
        if not self._checked:
            self._check_partitions()
        groups = self._partitioner.group(events)
        frames: list[tuple[int, int]] = []  # (partition, events in the frame), pipeline order
        pipe = self.client.pipeline(transaction=False)
        size, encode, maxlen = self.frame_size, self.codec.encode_batch, self.maxlen
        traceparent = current_traceparent()  # None unless tracing is on (domainbus.observe)
        for partition, group in enumerate(groups):
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                fields = {FORMAT: FORMAT_VERSION, COUNT: b"%d" % len(chunk), EVENTS: encode(chunk)}
                if traceparent is not None:
                    fields[TRACEPARENT] = traceparent.encode()
                pipe.xadd(self._names[partition], fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                frames.append((partition, len(chunk)))
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise PublishError(
                f"publishing to {self.stream!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        failed = [i for i, reply in enumerate(replies) if isinstance(reply, Exception)]
        if failed or len(replies) != len(frames):
            first = replies[failed[0]] if failed else None
            index = self._first_unwritten(events, frames, set(failed)) if failed else None
            raise PublishError(
                f"Redis refused {len(failed)} of {len(frames)} XADDs to {self.stream!r}: "
                f"{type(first).__name__}: {first}",
                batch_index=index,
            ) from first
        return len(events)

    dispatch_batch = publish_batch
    dispatch = publish

    def close(self) -> None:
        self.client.close()

    # -- internals -------------------------------------------------------------------------

    def _check_partitions(self) -> None:
        try:
            stream_partitions(self.client, self.stream, self.partitions)
        except redis.RedisError as exc:
            raise PublishError(
                f"cannot reach Redis for {self.stream!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self._checked = True

    def _first_unwritten(
        self, events: list[Any], frames: list[tuple[int, int]], failed: set[int]
    ) -> int:
        """Index (in `events`) of the first event whose frame's XADD failed."""
        frame_of: dict[tuple[int, int], int] = {}  # (partition, frame number) -> pipeline index
        numbers = [0] * self.partitions
        for index, (partition, _) in enumerate(frames):
            frame_of[partition, numbers[partition]] = index
            numbers[partition] += 1
        seen = [0] * self.partitions
        for index, partition in enumerate(self._partitioner.partitions_of(events)):
            if frame_of[partition, seen[partition] // self.frame_size] in failed:
                return index
            seen[partition] += 1
        return len(events)  # unreachable: some frame failed

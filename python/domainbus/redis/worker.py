"""`RedisWorker`: consume the partition streams of a group, in key order, at least once.

    worker = RedisWorker(redis, dispatcher, codec=codec, stream="orders", group="billing")
    worker.run()        # until SIGTERM / Ctrl-C (or `stop()` from another thread)

The loop (one thread; leases are renewed by a heartbeat thread, see `leases`):

1. Partitions newly leased are first recovered: their pending entries (read by a worker that
   died or gave the partition up, or by this one before a lost connection) are claimed in
   order with XAUTOCLAIM (delivery counts from XPENDING) and handled before any new entry.
2. XREADGROUP (BLOCK) reads new entries of the held partitions, a few per partition; each entry
   is a frame of events, decoded with one codec call and handed to `dispatcher.dispatch_batch`.
3. An entry is acknowledged (XACK) only after its dispatch returned; the acknowledgements are
   sent in one pipeline with the next XREADGROUP. Extra leases (when workers joined) are given
   up between batches, after their entries were acknowledged. Every `lease_ms` the worker
   checks that it has no unacknowledged entry left of a partition it reads (a client that
   retried a read whose reply was lost leaves one) and recovers that partition if it has.

Delivery is at least once: a crash after a dispatch and before its XACK delivers the frame
again; `idempotent` handlers make it effectively once. When a handler raises, the partition
stops (later entries wait, to keep the key order) and the entry is delivered again after
`retry_delay` seconds; on its `max_deliveries`-th delivery the frame is dispatched event by
event and the failing events go to the dead-letter stream (`dead_letters`), with undecodable
records and malformed entries; the rest goes on. A lost connection (or Redis restarting) is
retried with exponential backoff; unsent acknowledgements are sent first, then every held
partition is recovered again. SIGTERM and SIGINT (with `handle_signals`) finish the current
batch, acknowledge it, release the leases, delete the consumer from the group where it has no
pending entry left (XGROUP DELCONSUMER) and return; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

import msgspec
import redis

from domainbus._log import log_failure
from domainbus._trace import incoming
from domainbus.codec import EventCodec
from domainbus.delivery import batch_index
from domainbus.errors import DecodeError
from domainbus.redis.collector import spared_collector
from domainbus.redis.connection import connect, stream_partitions
from domainbus.redis.dead_letters import dead_letter_fields, frame_of_records
from domainbus.redis.entries import (
    EVENTS,
    FORMAT,
    FORMAT_VERSION,
    TRACEPARENT,
    check_name,
    check_positive,
    partition_key,
)
from domainbus.redis.leases import Leases, check_timing

__all__ = ["BatchDispatcher", "RedisWorker", "WorkerStats"]

log = logging.getLogger("domainbus.redis")

_RETRIED = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError is a ConnectionError


# KEYS: the partition streams; ARGV: group, consumer. Deletes the consumer from the group of
# each stream where it has no pending entry (atomically: nothing is read in between).
_DELETE_IDLE_CONSUMER = """
local deleted = 0
for i = 1, #KEYS do
  local found = redis.pcall('XPENDING', KEYS[i], ARGV[1], '-', '+', 1, ARGV[2])
  if type(found) == 'table' and found.err == nil and #found == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], ARGV[2])
    deleted = deleted + 1
  end
end
return deleted
"""


class BatchDispatcher(Protocol):
    """What a worker dispatches with: a `Dispatcher` of either backend, or any such object."""

    def dispatch_batch(self, events: Iterable[Any]) -> int: ...


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A progress report: totals since start (deliveries: a redelivered entry counts again),
    the rate since the last report, the group's lag (entries of all the stream's partitions
    the group has not read yet, from XINFO GROUPS; None: unknown), the partitions held."""

    consumer: str
    events: int
    entries: int
    dead_letters: int
    events_per_second: float
    lag: int | None
    partitions: tuple[int, ...]

    def line(self) -> str:
        lag = "?" if self.lag is None else f"{self.lag:,}"
        return (
            f"{self.consumer}: {self.events:,} events ({self.events_per_second:,.0f} events/s), "
            f"{self.dead_letters:,} dead letters, group lag {lag} entries, "
            f"partitions {','.join(map(str, self.partitions)) or '-'}"
        )


class _Failed(Exception):
    """A handler raised: the entry stays pending (internal)."""


class RedisWorker:
    """Consumes `stream`'s partitions as member `consumer` of `group` (see the module doc).

    `redis`: a URL or a `redis.Redis` client (bytes replies). `codec` decodes the frames.
    `consumer` must be unique among the group's live workers (default: host name and pid).
    `read_count`: entries read per partition per XREADGROUP. `lease_ms`: how long a dead
    worker's partitions wait before others take them over. `report(stats)` is called every
    `report_every` seconds. `freeze_gc`: while running, `gc.freeze()` the start-up objects and
    collect the youngest generation less often (undone at the end; see `collector`).
    """

    def __init__(
        self,
        redis: Any,
        dispatcher: BatchDispatcher,
        *,
        codec: EventCodec,
        stream: str = "domainbus",
        group: str = "domainbus",
        consumer: str | None = None,
        partitions: int | None = None,
        max_deliveries: int = 5,
        retry_delay: float = 1.0,
        read_count: int = 2,
        block_ms: int = 500,
        lease_ms: int = 5000,
        heartbeat_s: float = 0.25,
        dead_letter_stream: str | None = None,
        report: Callable[[WorkerStats], object] | None = None,
        report_every: float = 5.0,
        freeze_gc: bool = True,
    ) -> None:
        if not callable(getattr(dispatcher, "dispatch_batch", None)):
            raise TypeError(
                f"dispatcher must have dispatch_batch(), not {type(dispatcher).__qualname__}"
            )
        if not isinstance(codec, EventCodec):
            raise TypeError(f"codec must be an EventCodec, not {type(codec).__qualname__}")
        self.client = connect(redis)
        self.dispatcher = dispatcher
        self.codec = codec
        self.stream = check_name("stream", stream)
        self.group = check_name("group", group)
        self.consumer = check_name("consumer", consumer or f"{socket.gethostname()}-{os.getpid()}")
        self.requested_partitions = (
            None if partitions is None else check_positive("partitions", partitions)
        )
        self.max_deliveries = check_positive("max_deliveries", max_deliveries)
        self.read_count = check_positive("read_count", read_count)
        self.block_ms = check_positive("block_ms", block_ms)
        if retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0, not {retry_delay!r}")
        self.retry_delay = float(retry_delay)
        check_timing(lease_ms, heartbeat_s)
        self.lease_ms = lease_ms
        self.heartbeat_s = heartbeat_s
        self.dead_letter_stream = dead_letter_stream or f"{stream}:dead"
        self.report = report
        self.report_every = report_every
        self.freeze_gc = freeze_gc
        self.events = self.entries = self.dead_letters = 0
        self._stopping = threading.Event()
        self._leases: Leases | None = None
        self._keys: list[str] = []
        self._acks: dict[int, list[bytes]] = {}  # partition -> handled, not yet acknowledged
        self._recovered: set[int] = set()
        self._retry_at: dict[int, float] = {}
        self._next_self_check = 0.0

    def __repr__(self) -> str:
        return f"RedisWorker(stream={self.stream!r}, group={self.group!r}, {self.consumer!r})"

    # -- life cycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (thread- and signal-safe)."""
        self._stopping.set()

    def run(self, *, handle_signals: bool = True) -> WorkerStats:
        """Consume until `stop()` (or SIGTERM / SIGINT with `handle_signals`); returns totals."""
        restore = self._install_signals() if handle_signals else {}
        try:
            if not self._connect_with_backoff(self._set_up):
                return self.stats(0.0, lag=None)  # stopped before Redis could be reached
            assert self._leases is not None
            self._leases.start_heartbeat()
            with spared_collector() if self.freeze_gc else contextlib.nullcontext():
                self._loop()
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)
            self._shut_down()
        return self.stats(0.0, lag=None)

    def _set_up(self) -> None:
        partitions = stream_partitions(self.client, self.stream, self.requested_partitions)
        self._keys = [partition_key(self.stream, p) for p in range(partitions)]
        self._by_key = {key.encode(): p for p, key in enumerate(self._keys)}
        self._create_groups()
        if self._leases is None:
            self._leases = Leases(
                self.client,
                self.stream,
                self.group,
                self.consumer,
                partitions,
                lease_ms=self.lease_ms,
                heartbeat_s=self.heartbeat_s,
            )
        self._leases.tick()

    def _create_groups(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self._keys:
            pipe.xgroup_create(key, self.group, id="0", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError) and "BUSYGROUP" not in str(reply):
                raise reply

    def _shut_down(self) -> None:
        leases = self._leases
        if leases is None:
            return
        leases.stop_heartbeat()
        try:
            self._flush_acks()
            leases.release_all()
            self._leave_group()
        except redis.RedisError as exc:
            log.warning("domainbus worker %s: could not release at exit: %r", self.consumer, exc)

    def _leave_group(self) -> None:
        """At exit: delete this consumer from the group of every partition where it has no
        pending entry (XGROUP DELCONSUMER drops a consumer's pending entries, so one that
        has some is kept: they stay claimable), so consumers do not pile up in XINFO."""
        script = self.client.register_script(_DELETE_IDLE_CONSUMER)
        script(keys=self._keys, args=[self.group, self.consumer])

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT and self._stopping.is_set():
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    def _connect_with_backoff(self, step: Callable[[], object]) -> bool:
        """Run `step`, retrying connection errors with exponential backoff; False if stopped
        before it succeeded."""
        delay = 0.05
        while True:
            try:
                step()
                return True
            except _RETRIED as exc:
                if self._stopping.is_set():
                    return False
                log.warning(
                    "domainbus worker %s: %r; retrying in %.2f s", self.consumer, exc, delay
                )
                self._stopping.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        last_report = time.monotonic()
        last_events = 0
        while not self._stopping.is_set():
            try:
                self._step()
            except _RETRIED as exc:
                self._recovered.clear()  # entries read before the failure may be pending
                if self._stopping.is_set():
                    break
                log.warning(
                    "domainbus worker %s: connection lost: %r; reconnecting",
                    self.consumer, exc, exc_info=exc,
                )  # fmt: skip
                self._connect_with_backoff(self._reconnected)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("domainbus worker %s: group missing, recreating it", self.consumer)
                self._recovered.clear()
                self._create_groups()
            if self.report is not None and time.monotonic() - last_report >= self.report_every:
                now = time.monotonic()
                rate = (self.events - last_events) / (now - last_report)
                last_report, last_events = now, self.events
                try:
                    self.report(self.stats(rate, lag=self.lag()))
                except _RETRIED:
                    pass

    def _reconnected(self) -> None:
        self.client.ping()
        self._create_groups()
        self._flush_acks()
        assert self._leases is not None
        self._leases.tick()

    def _step(self) -> None:
        leases = self._leases
        assert leases is not None
        excess = leases.excess()
        if excess:
            self._flush_acks()
            leases.release(excess)
            self._recovered.difference_update(excess)
        held = leases.held()
        self._recovered &= held
        now = time.monotonic()
        for p in sorted(held - self._recovered):
            if self._retry_at.get(p, 0.0) <= now and not self._stopping.is_set():
                self._recover(p)
        readable = sorted(held & self._recovered)
        if readable and now >= self._next_self_check:
            readable = self._check_own_pending(readable)
        if not readable:
            self._flush_acks()
            leases.changed.clear()
            leases.changed.wait(min(self.heartbeat_s, self.retry_delay or self.heartbeat_s))
            return
        pipe = self.client.pipeline(transaction=False)
        acked = self._queue_acks(pipe)
        streams: Any = {self._keys[p]: ">" for p in readable}
        pipe.xreadgroup(
            self.group, self.consumer, streams, count=self.read_count, block=self.block_ms
        )
        replies = pipe.execute()
        self._acks_sent(acked, replies[:-1])
        for key, found in replies[-1] or ():
            partition = self._by_key[key]
            for entry_id, fields in found:
                if not leases.holds(partition):
                    break  # stays pending: the next holder claims it
                try:
                    self._handle(partition, entry_id, fields, 1)
                except _Failed:
                    self._pause(partition)
                    break

    def _check_own_pending(self, readable: list[int]) -> list[int]:
        """Between batches this worker has no unacknowledged entry of a partition it reads;
        if it has (a client that retried a read whose reply was lost), recover the partition
        so the entry is handled, in order, before newer ones. Runs every `lease_ms`."""
        self._next_self_check = time.monotonic() + self.lease_ms / 1000
        self._flush_acks()
        pipe = self.client.pipeline(transaction=False)
        for p in readable:
            pipe.xpending_range(self._keys[p], self.group, "-", "+", 1, self.consumer)
        stuck = [p for p, found in zip(readable, pipe.execute(), strict=True) if found]
        for p in stuck:
            log.warning("domainbus worker %s: %s has unacknowledged entries of this worker; "
                        "recovering it", self.consumer, self._keys[p])  # fmt: skip
            self._recovered.discard(p)
        return [p for p in readable if p not in stuck]

    def _recover(self, partition: int) -> None:
        """Claim and handle the partition's pending entries, in order, before new ones."""
        key = self._keys[partition]
        start = b"0-0"
        while not self._stopping.is_set():
            assert self._leases is not None
            if not self._leases.holds(partition):
                return
            pending: Any = self.client.xpending_range(key, self.group, start, "+", 100)
            if not pending:
                break
            deliveries = {p["message_id"]: int(p["times_delivered"]) + 1 for p in pending}
            reply: Any = self.client.xautoclaim(
                key, self.group, self.consumer, 0, start_id=start, count=len(pending)
            )
            next_start, claimed = reply[0], reply[1]
            for entry_id, fields in claimed:
                if fields is None:
                    continue
                try:
                    self._handle(partition, entry_id, fields, deliveries.get(entry_id, 1))
                except _Failed:
                    self._flush_acks()
                    self._pause(partition)
                    return
            self._flush_acks()
            if next_start == b"0-0":
                break
            start = next_start
        else:
            return
        self._recovered.add(partition)
        self._retry_at.pop(partition, None)

    def _pause(self, partition: int) -> None:
        self._recovered.discard(partition)
        self._retry_at[partition] = time.monotonic() + self.retry_delay

    # -- one entry -------------------------------------------------------------------------

    def _handle(self, partition: int, entry_id: bytes, fields: Any, deliveries: int) -> None:
        """Decode and dispatch one entry; queue its XACK. _Failed if a handler raised."""
        frame = fields.get(EVENTS)
        if fields.get(FORMAT) != FORMAT_VERSION or frame is None:
            self._dead_entry(partition, entry_id, fields, deliveries)
            return
        try:
            events = self.codec.decode_batch(frame)
        except DecodeError:
            events = self._decode_slowly(partition, entry_id, frame, deliveries)
        traceparent = fields.get(TRACEPARENT)
        token = None
        if traceparent is not None:  # the publisher's trace context (domainbus.observe)
            token = incoming.set([traceparent.decode(errors="replace")] * len(events))
        try:
            self._dispatch(partition, entry_id, frame, events, deliveries)
        finally:
            if token is not None:
                incoming.reset(token)
        self.events += len(events)
        self.entries += 1
        self._acks.setdefault(partition, []).append(entry_id)

    def _dispatch(
        self, partition: int, entry_id: bytes, frame: bytes, events: list[Any], deliveries: int
    ) -> None:
        """Dispatch one entry's events (the last delivery: one by one); _Failed on a failure."""
        if deliveries >= self.max_deliveries:
            self._dispatch_last_time(partition, entry_id, frame, events, deliveries)
        else:
            try:
                self.dispatcher.dispatch_batch(events)
            except Exception as exc:
                index = batch_index(exc, len(events))
                log_failure(
                    log, logging.WARNING,
                    "domainbus worker %s: %s entry %s, delivery %d of %d failed (retried after "
                    "%.1f s): %s", exc, None if index is None else events[index],
                    self.consumer, self._keys[partition], entry_id.decode(), deliveries,
                    self.max_deliveries, self.retry_delay, _describe(exc),
                )  # fmt: skip
                raise _Failed from exc

    def _decode_slowly(
        self, partition: int, entry_id: bytes, frame: bytes, deliveries: int
    ) -> list[Any]:
        """Decode record by record; dead-letter the records that fail, keep the others."""
        codec = self.codec
        try:
            records = codec.records.split_msgpack_array(frame)
        except DecodeError as invalid:
            error = f"DecodeError: {invalid.reason}: {invalid.detail}"
            self._dead(partition, entry_id, [frame], -1, "undecodable", error, deliveries,
                       raw_frame=frame)  # fmt: skip
            return []
        events = []
        for index, record in enumerate(records):
            try:
                events.append(codec.records.msgpack_record(record))
            except DecodeError as invalid:
                error = f"DecodeError: {invalid.reason}: {invalid.detail}"
                self._dead(partition, entry_id, [record], index, "undecodable", error, deliveries)
        return events

    def _dispatch_last_time(
        self, partition: int, entry_id: bytes, frame: bytes, events: list[Any], deliveries: int
    ) -> None:
        """The last delivery: event by event, dead-lettering the events that fail."""
        dispatch_batch = self.dispatcher.dispatch_batch
        records: list[msgspec.Raw] | None = None
        for index, event in enumerate(events):
            try:
                dispatch_batch((event,))
            except Exception as exc:
                if records is None:
                    records = _records_or_none(self.codec, frame, len(events))
                record: Any = records[index] if records is not None else self.codec.encode(event)
                self._dead(
                    partition, entry_id, [record], index, "handler-failed", _describe(exc),
                    deliveries, exc=exc, event=event,
                )  # fmt: skip

    def _dead(
        self,
        partition: int,
        entry_id: bytes,
        records: list[Any],
        index: int,
        reason: str,
        error: str,
        deliveries: int,
        *,
        raw_frame: bytes | None = None,
        exc: BaseException | None = None,
        event: object = None,
    ) -> None:
        fields = dead_letter_fields(
            frame=raw_frame if raw_frame is not None else frame_of_records(records),
            count=0 if raw_frame is not None else len(records),
            source=self._keys[partition],
            partition=partition,
            entry_id=entry_id,
            index=index,
            group=self.group,
            consumer=self.consumer,
            reason=reason,
            error=error,
            deliveries=deliveries,
        )
        self.client.xadd(self.dead_letter_stream, fields)  # type: ignore[arg-type]
        self.dead_letters += 1
        message = "domainbus worker %s: %s entry %s (index %d) -> %s: %s: %s"
        args = (self.consumer, self._keys[partition], entry_id.decode(), index,
                self.dead_letter_stream, reason, error)  # fmt: skip
        if exc is None:
            log.error(message, *args)
        else:
            log_failure(log, logging.ERROR, message, exc, event, *args)

    def _dead_entry(self, partition: int, entry_id: bytes, fields: Any, deliveries: int) -> None:
        """A malformed entry (not a domainbus frame): dead-letter it and XACK it in one MULTI."""
        version = fields.get(FORMAT)
        error = f"not a domainbus frame: format {version!r}, fields {sorted(fields)!r}"
        packed = msgspec.msgpack.encode(dict(fields))
        dead = dead_letter_fields(
            frame=packed, count=0, source=self._keys[partition], partition=partition,
            entry_id=entry_id, index=-1, group=self.group, consumer=self.consumer,
            reason="malformed-entry", error=error, deliveries=deliveries,
        )  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, dead)  # type: ignore[arg-type]
        pipe.xack(self._keys[partition], self.group, entry_id)
        pipe.execute()
        self.dead_letters += 1
        self.entries += 1
        log.warning("domainbus worker %s: %s", self.consumer, error)

    # -- acknowledgements ------------------------------------------------------------------

    def _queue_acks(self, pipe: Any) -> list[int]:
        partitions = [p for p, ids in self._acks.items() if ids]
        for p in partitions:
            pipe.xack(self._keys[p], self.group, *self._acks[p])
        return partitions

    def _acks_sent(self, partitions: list[int], replies: list[Any]) -> None:
        for p, reply in zip(partitions, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            del self._acks[p]

    def _flush_acks(self) -> None:
        if not any(self._acks.values()):
            return
        pipe = self.client.pipeline(transaction=False)
        partitions = self._queue_acks(pipe)
        self._acks_sent(partitions, pipe.execute())

    # -- reporting -------------------------------------------------------------------------

    def lag(self) -> int | None:
        """Entries of all partitions not yet read by the group (XINFO GROUPS lag, Redis 7)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self._keys:
            pipe.xinfo_groups(key)
        total = 0
        for groups in pipe.execute():
            mine = [g for g in groups if g["name"] == self.group.encode()]
            lag = mine[0].get("lag") if mine else None
            if lag is None:
                return None
            total += int(lag)
        return total

    def stats(self, rate: float, *, lag: int | None) -> WorkerStats:
        held = sorted(self._leases.held()) if self._leases is not None else []
        return WorkerStats(
            self.consumer, self.events, self.entries, self.dead_letters, rate, lag, tuple(held)
        )


def _records_or_none(codec: EventCodec, frame: bytes, count: int) -> list[msgspec.Raw] | None:
    """The raw records of a frame when they line up with its decoded events."""
    try:
        records = codec.records.split_msgpack_array(frame)
    except DecodeError:
        return None
    return records if len(records) == count else None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"

"""The interfaces of the outbox: what a store must do, and the records it hands back.

`OutboxStore` is what `UnitOfWork` and `relay` need from a store, `IdempotencyStore` what
`idempotent` needs, and `Outbox` the whole public API both stores offer (`SqliteOutbox`, the
embedded one, and `PostgresOutbox`). They are plain Protocols: nothing checks them at run time,
per event or otherwise. The argument checks both stores share live here too.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from domainbus.errors import DomainbusError

__all__ = [
    "DeadLetter",
    "IdempotencyStore",
    "Outbox",
    "OutboxBatch",
    "OutboxError",
    "OutboxStore",
    "RelayResult",
]


class OutboxError(DomainbusError):
    """The outbox could not be set up or used as asked (the message says why)."""


@dataclass(slots=True)
class OutboxBatch:
    """Outbox rows claimed by one relay or one unit of work, in id order.

    `claim` identifies the claim in the store (0: the rows are not claimed); `payloads` and
    `attempts` are filled for rows read back from the store (a relay's batch) and empty for
    rows a unit of work just wrote. `in_rows`: the claim is written in the rows themselves
    (a unit of work's), not kept apart (a relay's).
    """

    claim: int
    ids: list[int]
    payloads: list[bytes]
    attempts: list[int]
    in_rows: bool = False
    traceparents: list[str | None] = field(default_factory=list)
    """The W3C traceparent stored with each row (read back by a relay's claim; empty when
    none was read). See `domainbus.observe`."""


@dataclass(frozen=True, slots=True)
class RelayResult:
    """What one `relay()` call did: events delivered, and outbox row ids dead-lettered."""

    delivered: int = 0
    dead_lettered: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row moved out of the outbox: undecodable, or its handlers failed `max_attempts` times."""

    id: int
    outbox_id: int
    payload: bytes
    attempts: int
    error: str
    failed_at: float


class OutboxStore(Protocol):
    """Durable storage of events, written in the user's transaction and claimed for delivery.

    Transaction methods act on the store's connection; `append`, `claim` and `settle` run
    inside the caller's transaction. Claims keep two relays (or a relay and a unit
    of work) from delivering the same row at the same time; a claim older than the store's
    lease is taken to be abandoned (its owner died) and its rows are claimed again.

    `claim_locks`: True when a relay's claim is row locks held by the transaction that claims
    (settled before that transaction commits: PostgreSQL); False when the claim is written
    into the store and committed before the dispatch (SQLite). See `domainbus.outbox.relay`.
    """

    claim_locks: bool

    @property
    def connection(self) -> Any: ...
    @property
    def in_transaction(self) -> bool: ...
    def begin(self) -> None: ...
    def commit(self) -> None:
        """Commit, first marking as delivered the batches `hold` deferred."""

    def rollback(self) -> None: ...
    def encode(self, event: Any) -> bytes: ...
    def decode(self, payload: bytes) -> Any: ...
    def append(
        self, payloads: Sequence[bytes], *, claimed: bool = True, traceparent: str | None = None
    ) -> OutboxBatch:
        """Store the payloads in the current transaction, claimed by this store or free;
        `traceparent` (W3C trace context of the recording code) is stored with each row."""

    def claim(self, limit: int, *, take_over: bool = False, after: int = 0) -> OutboxBatch | None:
        """Claim up to `limit` of the oldest unclaimed rows (None when there are none);
        `after`, the last id a relay claimed, is a hint: rows past it may come first."""

    def discard_handler_writes(self, batch: OutboxBatch) -> bool:
        """After a failed dispatch of `batch`: roll back what the handlers wrote through the
        store's connection since the batch was claimed (or committed); True if they wrote."""

    def settle(
        self,
        batch: OutboxBatch,
        *,
        delivered: Sequence[int] = (),
        failed: Sequence[tuple[int, str]] = (),
        dead: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        """In the current transaction: remove `delivered` rows, count a failed attempt for each
        `failed` row (dead-lettering it at the last attempt), dead-letter `dead` rows, release
        the rest of the batch. Returns the row ids that went to the dead-letter table."""

    def hold(self, batch: OutboxBatch) -> None:
        """The batch was delivered: settle it in the next transaction this store commits."""


class IdempotencyStore(Protocol):
    """Remembers which (handler key, event id) pairs have run."""

    def run_once(self, key: str, event_id: uuid.UUID, call: Callable[[], object]) -> bool:
        """Run `call()` unless (key, event_id) is recorded; record it in the same transaction.

        Returns False when skipped. If `call` raises, nothing is recorded.
        """


class Outbox(OutboxStore, IdempotencyStore, Protocol):
    """The public API of both outbox stores (`SqliteOutbox`, `PostgresOutbox`)."""

    codec: Any
    lease: float
    max_attempts: int

    def bind(self, handle: object) -> Outbox:
        """This outbox seen through another handle's transactions (e.g. a SQLAlchemy Session)."""

    def relay(
        self, dispatcher: Any, batch_size: int = 1000, *, take_over: bool = False
    ) -> RelayResult: ...
    def relay_async(
        self,
        dispatcher: Any,
        batch_size: int = 1000,
        *,
        take_over: bool = False,
        concurrent: bool = False,
    ) -> Coroutine[Any, Any, RelayResult]: ...
    def pending(self) -> int: ...
    def dead_letters(self) -> list[DeadLetter]: ...
    def requeue(self, dead_letter_ids: Sequence[int]) -> int: ...
    def prune_processed(self, older_than: float) -> int: ...
    @property
    def sweep_after(self) -> float: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class HeldBatches:
    """Delivered batches whose rows the next commit deletes, shared by an outbox and its views
    (which may live on other threads: a lock guards the list).

    `since`: when the list last became non-empty (`time.monotonic()`), so that the sweeper
    (`domainbus.outbox.sweeper`) can delete batches no commit took soon enough. `watched`:
    whether the sweeper is watching the outbox; `add` returns True when it is not yet (the
    caller then asks it to), and `unwatch_if_empty` ends the watch only while nothing is held.
    """

    __slots__ = ("_lock", "batches", "since", "watched")

    def __init__(self) -> None:
        self.batches: list[OutboxBatch] = []  # read without the lock only to test emptiness
        self._lock = threading.Lock()
        self.since = 0.0
        self.watched = False

    def __bool__(self) -> bool:
        return bool(self.batches)

    def add(self, batch: OutboxBatch) -> bool:
        """Hold `batch`; True when the sweeper must be asked to watch."""
        with self._lock:
            if not self.batches:
                self.since = time.monotonic()
            self.batches.append(batch)
            if self.watched:
                return False
            self.watched = True
            return True

    def take(self) -> list[OutboxBatch]:
        """Every held batch, now no longer held."""
        if not self.batches:  # the common case of a busy outbox: nothing since the last commit
            return []
        with self._lock:
            batches, self.batches = self.batches, []
        return batches

    def take_if_held_since(self, moment: float) -> list[OutboxBatch]:
        """Every held batch if the list has been non-empty since `moment` or before, else none."""
        with self._lock:
            if not self.batches or self.since > moment:
                return []
            batches, self.batches = self.batches, []
        return batches

    def restore(self, batches: Iterable[OutboxBatch]) -> None:
        """Hold again batches whose deletion was rolled back (the sweeper may take them at once:
        they were delivered a while ago)."""
        batches = list(batches)
        if batches:
            with self._lock:
                self.batches[:0] = batches
                self.since = 0.0

    def unwatch_if_empty(self) -> bool:
        """End the sweeper's watch if nothing is held (True then)."""
        with self._lock:
            if self.batches:
                return False
            self.watched = False
            return True


def check_codec(codec: object) -> None:
    if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
        raise TypeError(f"codec must be an EventCodec, not {type(codec).__qualname__}")


def check_settings(lease: object, max_attempts: object) -> None:
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease >= 0:
        raise ValueError(f"lease must be a number of seconds >= 0, not {lease!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")


def check_age(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValueError(f"older_than must be a number of seconds >= 0, not {seconds!r}")
    return float(seconds)


def check_payloads(payloads: object) -> None:
    """`append` takes a list (or tuple) of encoded events: bytes each, never one str or bytes."""
    if not isinstance(payloads, list | tuple):
        what = type(payloads).__qualname__
        raise TypeError(
            f"append() needs a list of encoded events (bytes), not a {what}"
            + ("; wrap a single payload in a list" if isinstance(payloads, bytes | str) else "")
        )
    for payload in payloads:
        if type(payload) is not bytes:
            raise TypeError(
                "append() needs encoded events (bytes, from outbox.encode(event)), not "
                + type(payload).__qualname__
            )

"""The interfaces of the outbox: what a store must do, and the records it hands back.

`OutboxStore` is what `UnitOfWork` and `relay` need from a store; `SqliteOutbox` is the
embedded one and a Postgres store can plug in later. `IdempotencyStore` is what `idempotent`
needs. Both are plain Protocols: nothing checks them at run time, per event or otherwise.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from domainbus.errors import DomainbusError

__all__ = ["Batch", "DeadLetter", "IdempotencyStore", "OutboxError", "OutboxStore", "RelayResult"]


class OutboxError(DomainbusError):
    """The outbox could not be set up or used as asked (the message says why)."""


@dataclass(slots=True)
class Batch:
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
    """

    @property
    def connection(self) -> sqlite3.Connection: ...
    @property
    def in_transaction(self) -> bool: ...
    def begin(self) -> None: ...
    def commit(self) -> None:
        """Commit, first marking as delivered the batches `hold` deferred."""

    def rollback(self) -> None: ...
    def encode(self, event: Any) -> bytes: ...
    def decode(self, payload: bytes) -> Any: ...
    def append(self, payloads: Sequence[bytes], *, claimed: bool = True) -> Batch:
        """Store the payloads in the current transaction, claimed by this store or free."""

    def claim(self, limit: int, *, take_over: bool = False) -> Batch | None:
        """Claim up to `limit` of the oldest unclaimed rows (None when there are none)."""

    def settle(
        self,
        batch: Batch,
        *,
        delivered: Sequence[int] = (),
        failed: Sequence[tuple[int, str]] = (),
        dead: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        """In the current transaction: remove `delivered` rows, count a failed attempt for each
        `failed` row (dead-lettering it at the last attempt), dead-letter `dead` rows, release
        the rest of the batch. Returns the row ids that went to the dead-letter table."""

    def hold(self, batch: Batch) -> None:
        """The batch was delivered: settle it in the next transaction this store commits."""


class IdempotencyStore(Protocol):
    """Remembers which (handler key, event id) pairs have run."""

    def run_once(self, key: str, event_id: uuid.UUID, call: Callable[[], object]) -> bool:
        """Run `call()` unless (key, event_id) is recorded; record it in the same transaction.

        Returns False when skipped. If `call` raises, nothing is recorded.
        """

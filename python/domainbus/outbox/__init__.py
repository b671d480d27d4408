"""The transactional outbox: events stored with the change that caused them, delivered at least
once.

    outbox = SqliteOutbox(connection, codec)             # WAL, busy timeout, synchronous=NORMAL
    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        connection.execute("INSERT INTO users ...")
        uow.track(user)                                   # its events go into the outbox rows
    # committed together; then delivered, and the rows deleted

    outbox.relay(dispatcher)                              # at start-up and whenever needed
    await outbox.relay_async(dispatcher)                  # the same, for coroutine handlers

Durability: `synchronous="NORMAL"` (the default) in WAL mode loses nothing on a process crash,
but a power loss or OS crash can lose the last transactions (the user's writes and their
events together, never one without the other). `synchronous="FULL"` syncs every commit.

Delivery is at least once; wrap handlers that must not run twice in `idempotent(handler,
outbox)`. Rows that cannot be decoded, or whose handlers fail `max_attempts` times, move to the
dead-letter table (`outbox.dead_letters()`, `outbox.requeue(ids)`), reported by row id.
"""

from domainbus.outbox.idempotent import idempotent
from domainbus.outbox.relay import relay, relay_async
from domainbus.outbox.schema import SYNCHRONOUS_LEVELS, Synchronous
from domainbus.outbox.sqlite import SqliteOutbox
from domainbus.outbox.store import (
    Batch,
    DeadLetter,
    IdempotencyStore,
    OutboxError,
    OutboxStore,
    RelayResult,
)

__all__ = [
    "SYNCHRONOUS_LEVELS",
    "Batch",
    "DeadLetter",
    "IdempotencyStore",
    "OutboxError",
    "OutboxStore",
    "RelayResult",
    "SqliteOutbox",
    "Synchronous",
    "idempotent",
    "relay",
    "relay_async",
]

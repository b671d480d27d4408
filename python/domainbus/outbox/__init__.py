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

`PostgresOutbox(conninfo_or_connection, codec)` (psycopg 3, loaded on first use) is the same on
PostgreSQL: relays claim with FOR UPDATE SKIP LOCKED, wake on LISTEN/NOTIFY, and
`synchronous_commit` is set explicitly ("on" by default). Both follow `Outbox`, one Protocol.

Delivery is at least once; wrap handlers that must not run twice in `idempotent(handler,
outbox)`. Rows that cannot be decoded, or whose handlers fail `max_attempts` times, move to the
dead-letter table (`outbox.dead_letters()`, `outbox.requeue(ids)`), reported by row id.
"""

from typing import TYPE_CHECKING

from domainbus.outbox.idempotent import idempotent
from domainbus.outbox.relay import relay, relay_async
from domainbus.outbox.schema import SYNCHRONOUS_LEVELS, Synchronous
from domainbus.outbox.sqlite import SqliteOutbox
from domainbus.outbox.store import (
    DeadLetter,
    IdempotencyStore,
    Outbox,
    OutboxBatch,
    OutboxError,
    OutboxStore,
    RelayResult,
)

if TYPE_CHECKING:
    from domainbus.outbox.postgres import PostgresOutbox

__all__ = [
    "SYNCHRONOUS_LEVELS",
    "DeadLetter",
    "IdempotencyStore",
    "Outbox",
    "OutboxBatch",
    "OutboxError",
    "OutboxStore",
    "PostgresOutbox",
    "RelayResult",
    "SqliteOutbox",
    "Synchronous",
    "idempotent",
    "relay",
    "relay_async",
]


def __getattr__(name: str) -> object:
    """`PostgresOutbox` loads psycopg: import it only when asked for."""
    if name == "PostgresOutbox":
        from domainbus.outbox.postgres import PostgresOutbox

        return PostgresOutbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

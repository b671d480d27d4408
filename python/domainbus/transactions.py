"""The transactions a unit of work, an outbox and a relay run in: a Protocol, an adapter per kind.

`Transaction` is the little a unit of work needs from the user's database handle: begin, commit,
roll back, and a DB-API cursor on the connection the transaction runs on (the outbox writes its
rows through it, in the driver's own SQL). `transaction_for(handle)` wraps what users already
have, so they write no glue:

- a `sqlite3.Connection` (legacy or autocommit mode): `SqliteTransaction`;
- a psycopg 3 `Connection` (autocommit on or off): `PsycopgTransaction`;
- a SQLAlchemy `Session` or `Connection`: `SqlAlchemyTransaction`;
- a SQLAlchemy `AsyncSession` or `AsyncConnection` (for `AsyncUnitOfWork`):
  `AsyncSqlAlchemyTransaction`, whose steps run in the session's greenlet (`run_sync`).

Nothing here imports psycopg or SQLAlchemy: a handle's type tells which adapter it needs, and
its library is already imported when the user has one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

__all__ = [
    "AsyncSqlAlchemyTransaction",
    "PsycopgTransaction",
    "SqlAlchemyTransaction",
    "SqliteTransaction",
    "Transaction",
    "describe_error",
    "transaction_for",
]

Dialect = Literal["sqlite", "postgresql", "other"]
T = TypeVar("T")


@runtime_checkable
class Transaction(Protocol):
    """Transaction control on one database handle (checked once per unit of work, never per row).

    `cursor()` returns a DB-API cursor on the connection the current (or next) transaction runs
    on; statements executed on it are part of that transaction. `dialect` says whose SQL it
    speaks ("sqlite": `?` parameters, "postgresql": `%s`).
    """

    @property
    def in_transaction(self) -> bool: ...
    @property
    def dialect(self) -> Dialect: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def cursor(self) -> Any: ...
    @property
    def user_handle(self) -> object:
        """What the user passed (the connection or session)."""


def describe_error(exc: BaseException) -> str:
    """`TypeName: message`, as stored with a failed outbox row."""
    return f"{type(exc).__qualname__}: {exc}"


class SqliteTransaction:
    """Explicit transactions on a user's `sqlite3.Connection` (legacy or autocommit mode).

    `begin` issues BEGIN IMMEDIATE: the write lock is taken at once, so a busy database makes
    the caller wait (up to the busy timeout) instead of failing when a read turns into a write.
    Connections opened with `autocommit=False` (Python 3.12+) always hold a transaction open
    and are refused.
    """

    __slots__ = ("_cursor", "connection")
    dialect: Dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(f"expected a sqlite3.Connection, not {type(connection).__qualname__}")
        if getattr(connection, "autocommit", None) is False:
            raise ValueError(
                "connections opened with autocommit=False are not supported: open it with "
                "autocommit=True or leave the default (the legacy isolation_level)"
            )
        self.connection = connection
        self._cursor = connection.cursor()

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def begin(self) -> None:
        """Start a write transaction (BEGIN IMMEDIATE)."""
        self._cursor.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._cursor.execute("COMMIT")

    def rollback(self) -> None:
        """Roll back the open transaction, if there is one."""
        if self.connection.in_transaction:
            self._cursor.execute("ROLLBACK")

    def cursor(self) -> sqlite3.Cursor:
        return self._cursor

    @property
    def user_handle(self) -> object:
        return self.connection


class PsycopgTransaction:
    """Transactions on a psycopg 3 `Connection`.

    With `autocommit=False` (psycopg's default) psycopg itself begins a transaction at the first
    statement, so `begin` sends nothing; with `autocommit=True` it sends BEGIN. `commit` and
    `rollback` end whatever transaction is open.
    """

    __slots__ = ("_cursor", "_idle", "connection")
    dialect: Dialect = "postgresql"

    def __init__(self, connection: Any) -> None:
        import psycopg

        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"expected a psycopg.Connection, not {type(connection).__qualname__}")
        self.connection = connection
        self._cursor = tuple_cursor(connection)
        self._idle = psycopg.pq.TransactionStatus.IDLE

    @property
    def in_transaction(self) -> bool:
        # libpq's status straight from the pgconn: `connection.info` builds an object per read
        # (1.8 against 0.1 us, read twice by every unit of work)
        return bool(self.connection.pgconn.transaction_status != self._idle)

    def begin(self) -> None:
        if self.connection.autocommit:
            self._cursor.execute("BEGIN")

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        self.connection.rollback()

    def cursor(self) -> Any:
        return self._cursor

    @property
    def user_handle(self) -> object:
        return self.connection


def tuple_cursor(connection: Any, **options: Any) -> Any:
    """A cursor on a psycopg connection that returns rows as tuples, whatever the connection's
    own `row_factory` (a user's `dict_row` connection must not change what the stores read)."""
    global _tuple_row
    if _tuple_row is None:
        from psycopg.rows import tuple_row

        _tuple_row = tuple_row
    return connection.cursor(row_factory=_tuple_row, **options)


_tuple_row: Any = None  # psycopg.rows.tuple_row, imported on first use


class SqlAlchemyTransaction:
    """Transactions of a SQLAlchemy `Session` or `Connection` (SQLAlchemy 2).

    The outbox's statements go through the DB-API connection the session (or connection) is
    using for its current transaction, so they commit or roll back with the ORM's writes. A
    session may change connections between transactions: `cursor()` follows it. `commit`
    flushes the session first, as `Session.commit` does.
    """

    __slots__ = ("_cursor", "_dbapi", "_is_session", "handle")

    def __init__(self, handle: Any) -> None:
        from sqlalchemy.engine import Connection
        from sqlalchemy.orm import Session

        if not isinstance(handle, Session | Connection):
            raise TypeError(
                "expected a SQLAlchemy Session or Connection, not " + type(handle).__qualname__
            )
        self.handle: Any = handle
        self._is_session = isinstance(handle, Session)
        self._dbapi: Any = None
        self._cursor: Any = None

    @property
    def dialect(self) -> Dialect:
        bind = self.handle.get_bind() if self._is_session else self.handle
        name = str(bind.dialect.name)
        return "sqlite" if name == "sqlite" else "postgresql" if name == "postgresql" else "other"

    @property
    def in_transaction(self) -> bool:
        return bool(self.handle.in_transaction())

    def begin(self) -> None:
        self.handle.begin()

    def commit(self) -> None:
        self.handle.commit()

    def rollback(self) -> None:
        self.handle.rollback()

    def cursor(self) -> Any:
        """A cursor on the DB-API connection of the current transaction (begun if need be)."""
        connection = self.handle.connection() if self._is_session else self.handle
        dbapi = connection.connection.dbapi_connection
        if dbapi is not self._dbapi:
            psycopg = type(dbapi).__module__.startswith("psycopg")
            self._dbapi, self._cursor = dbapi, tuple_cursor(dbapi) if psycopg else dbapi.cursor()
        return self._cursor

    @property
    def user_handle(self) -> object:
        return self.handle


class AsyncSqlAlchemyTransaction(SqlAlchemyTransaction):
    """A SQLAlchemy `AsyncSession` or `AsyncConnection`: the synchronous `SqlAlchemyTransaction`
    of its sync twin, whose steps `run` inside the session's greenlet (`run_sync`), where the
    async driver's calls work as blocking ones."""

    __slots__ = ("async_handle",)

    def __init__(self, handle: Any) -> None:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

        if isinstance(handle, AsyncSession):
            super().__init__(handle.sync_session)
        elif isinstance(handle, AsyncConnection):
            super().__init__(handle.sync_connection)
        else:
            raise TypeError(
                "expected a SQLAlchemy AsyncSession or AsyncConnection, not "
                + type(handle).__qualname__
            )
        self.async_handle = handle

    @property
    def user_handle(self) -> object:
        return self.async_handle

    def run(self, step: Callable[[], T]) -> Awaitable[T]:
        """Run a synchronous step that uses this transaction, in the session's greenlet."""
        result: Awaitable[T] = self.async_handle.run_sync(lambda _sync: step())
        return result


def transaction_for(handle: object) -> Transaction:
    """The adapter for `handle` (returned as is if it already is a `Transaction`)."""
    kind = type(handle)
    if kind in _ADAPTERS:  # (the Protocol's isinstance reads every member: slow)
        return handle  # type: ignore[return-value]
    adapter = _ADAPTER_OF.get(kind)  # once per unit of work: found once per kind of handle
    if adapter is None:
        adapter = _ADAPTER_OF[kind] = _adapter_for(handle)
    return adapter(handle)


def _adapter_for(handle: object) -> Callable[[Any], Transaction]:
    """The adapter class for handles of `handle`'s type (TypeError if there is none)."""
    if isinstance(handle, sqlite3.Connection):
        return SqliteTransaction
    library = type(handle).__module__.partition(".")[0]
    if library == "psycopg":
        import psycopg

        if isinstance(handle, psycopg.Connection):
            return PsycopgTransaction
        if isinstance(handle, psycopg.AsyncConnection):
            raise TypeError(
                "a psycopg AsyncConnection cannot be driven synchronously: pass a psycopg "
                "Connection, or a SQLAlchemy AsyncSession on the postgresql+psycopg driver"
            )
    if library == "sqlalchemy":
        from sqlalchemy.engine import Connection
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
        from sqlalchemy.orm import Session

        if isinstance(handle, AsyncSession | AsyncConnection):
            return AsyncSqlAlchemyTransaction
        if isinstance(handle, Session | Connection):
            return SqlAlchemyTransaction
    if isinstance(handle, Transaction) and not isinstance(handle, type):
        return _as_is
    raise TypeError(
        "expected a sqlite3.Connection, a psycopg Connection, a SQLAlchemy Session, Connection "
        f"or AsyncSession, not {type(handle).__qualname__}"
    )


def _as_is(handle: Any) -> Transaction:
    """A handle that already is a `Transaction` (the user's own adapter)."""
    return cast(Transaction, handle)


_ADAPTER_OF: dict[type, Callable[[Any], Transaction]] = {}
_ADAPTERS = frozenset(
    {SqliteTransaction, PsycopgTransaction, SqlAlchemyTransaction, AsyncSqlAlchemyTransaction}
)

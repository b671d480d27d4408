"""Both outbox stores behind one test fixture: `store_db` is a `Db`, SQLite on a temporary file or
PostgreSQL on a fresh database of the real test server (tests/servers.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domainbus.outbox import Outbox, SqliteOutbox

STORES = ("sqlite", "postgres")


class Db:
    """One database of one kind, and how a test reaches it."""

    def __init__(self, kind: str, target: str, codec: Any) -> None:
        self.kind = kind
        self.target = target  # a file path (SQLite) or a libpq URL (PostgreSQL)
        self.codec = codec
        self._opened: list[Any] = []

    def sql(self, query: str) -> str:
        """`query` with SQLite's `?` parameters in this database's style."""
        return query.replace("?", "%s") if self.kind == "postgres" else query

    def open(self, target: Any = None, **settings: Any) -> Outbox:
        """A new outbox on this database (its own connection, or `target`'s)."""
        if self.kind == "postgres":
            from domainbus.outbox import PostgresOutbox

            outbox: Outbox = PostgresOutbox(target or self.target, self.codec, **settings)
        else:
            outbox = SqliteOutbox(target or self.target, self.codec, **settings)
        self._opened.append(outbox)
        return outbox

    def connect(self) -> Any:
        """A raw connection whose first write opens a transaction (sqlite3's legacy mode,
        psycopg with autocommit off)."""
        if self.kind == "postgres":
            import psycopg

            connection: Any = psycopg.connect(self.target)
        else:
            connection = sqlite3.connect(self.target)
        self._opened.append(connection)
        return connection

    def sqlalchemy_url(self, *, asynchronous: bool = False) -> str:
        if self.kind == "postgres":
            return self.target.replace("postgresql://", "postgresql+psycopg://", 1)
        if asynchronous:
            pytest.skip("no async SQLite driver here")
        return f"sqlite:///{self.target}"

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> None:
        """Run a statement in a transaction of its own, on a connection of its own."""
        connection = self._raw()
        try:
            connection.execute(self.sql(query), params)
            connection.commit()
        finally:
            connection.close()

    def count(self, query: str, params: tuple[Any, ...] = ()) -> int:
        """The first column of the first row, as committed (read on a connection of its own)."""
        connection = self._raw()
        try:
            row = connection.execute(self.sql(query), params).fetchone()
            return int(row[0] or 0)
        finally:
            connection.close()

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        connection = self._raw()
        try:
            return [tuple(row) for row in connection.execute(self.sql(query)).fetchall()]
        finally:
            connection.close()

    def _raw(self) -> Any:
        if self.kind == "postgres":
            import psycopg

            return psycopg.connect(self.target, autocommit=True)
        return sqlite3.connect(self.target)

    def close(self) -> None:
        for thing in reversed(self._opened):
            try:
                thing.close()
            except Exception:
                pass


def execute(outbox: Outbox, db: Db, query: str, params: tuple[Any, ...] = ()) -> None:
    """A statement on the outbox's connection, in its current transaction if one is open."""
    outbox.connection.execute(db.sql(query), params)


def make_db(request: pytest.FixtureRequest, tmp_path: Path, kind: str, codec: Any) -> Iterator[Db]:
    if kind == "postgres":
        target = request.getfixturevalue("postgres_dsn")
    else:
        target = str(tmp_path / "app.db")
    db = Db(kind, target, codec)
    yield db
    db.close()

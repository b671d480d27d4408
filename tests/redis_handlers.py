"""Dispatchers for the worker processes of test_redis_processes.py (`domainbus worker
redis_handlers:counting ...`): an idempotent handler whose effects and idempotency records
commit in one SQLite transaction per stream entry, in a database shared by every worker
(`DOMAINBUS_TEST_DB`), so the count is exact however often an entry is delivered; it also
records any event that arrives out of its key's order."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import domainbus
from domainbus.outbox import SqliteOutbox, idempotent
from redis_support import CODEC, Placed

codec = CODEC

SCHEMA = """
CREATE TABLE IF NOT EXISTS handled_count (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER);
INSERT OR IGNORE INTO handled_count VALUES (0, 0);
CREATE TABLE IF NOT EXISTS last_seq (key TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS out_of_order (key TEXT, seq INTEGER, expected INTEGER);
"""


def open_store(path: str, *, create: bool = True) -> SqliteOutbox:
    """The shared database, its tables made first when `create` (the test process does it once,
    before starting the workers)."""
    store = SqliteOutbox(path, CODEC, busy_timeout=30.0)
    if create:
        store.connection.executescript(SCHEMA)
    return store


class PerEntryTransaction:
    """Runs each `dispatch_batch` (one stream entry) in one SQLite transaction."""

    def __init__(self, store: SqliteOutbox, inner: Any) -> None:
        self.store = store
        self.inner = inner

    def dispatch_batch(self, events: Iterable[Any]) -> int:
        self.store.begin()
        try:
            calls = int(self.inner.dispatch_batch(events))
        except BaseException:
            self.store.rollback()
            raise
        self.store.commit()
        return calls


def counting() -> PerEntryTransaction:
    # no schema script here: its INSERT needs the write lock, and a worker starting while the
    # others commit entry after entry could wait behind them (SQLite's busy handler is not
    # fair) until they stopped, then start with nothing left to read
    store = open_store(os.environ["DOMAINBUS_TEST_DB"], create=False)
    cursor = store.connection.cursor()

    def count(event: Placed) -> None:
        row = cursor.execute("SELECT seq FROM last_seq WHERE key = ?", (event.aggregate_id,))
        found = row.fetchone()
        expected = 0 if found is None else found[0] + 1
        if event.seq != expected:
            cursor.execute(
                "INSERT INTO out_of_order VALUES (?, ?, ?)",
                (event.aggregate_id, event.seq, expected),
            )
        cursor.execute(
            "INSERT OR REPLACE INTO last_seq VALUES (?, ?)", (event.aggregate_id, event.seq)
        )
        cursor.execute("UPDATE handled_count SET n = n + 1")

    dispatcher = domainbus.Dispatcher()
    dispatcher.register_handler(Placed, idempotent(count, store, key="count"))
    return PerEntryTransaction(store, dispatcher)

"""The outside world: the SQLite schema, the product repository and the notifications."""

from __future__ import annotations

import sqlite3
from datetime import date

from allocation.domain import Batch, OrderLine, Product

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    reference TEXT PRIMARY KEY, sku TEXT NOT NULL, purchased_quantity INTEGER NOT NULL, eta TEXT
);
CREATE TABLE IF NOT EXISTS allocations (
    orderid TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
    batchref TEXT NOT NULL REFERENCES batches (reference)
);
CREATE TABLE IF NOT EXISTS allocations_view (
    orderid TEXT NOT NULL, sku TEXT NOT NULL, batchref TEXT NOT NULL,
    PRIMARY KEY (orderid, sku)
);
"""


def create_schema(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)


class ProductRepository:
    """Products (a SKU's batches and their allocations) stored in SQLite.

    Every product it hands out is tracked by the unit of work it belongs to, so the events
    the product records leave with the commit (the book's `seen` set, kept by domainbus).
    """

    def __init__(self, connection: sqlite3.Connection, track: object) -> None:
        self._connection = connection
        self._track = track

    def get(self, sku: str) -> Product | None:
        rows = self._connection.execute(
            "SELECT reference, purchased_quantity, eta FROM batches WHERE sku = ?", (sku,)
        ).fetchall()
        if not rows:
            return None
        batches = {
            ref: Batch(ref, sku, qty, date.fromisoformat(eta) if eta else None)
            for ref, qty, eta in rows
        }
        for orderid, qty, batchref in self._connection.execute(
            "SELECT orderid, qty, batchref FROM allocations WHERE sku = ? ORDER BY rowid", (sku,)
        ):
            batches[batchref].allocations.append(OrderLine(orderid, sku, qty))
        return self._tracked(Product(sku, list(batches.values())))

    def get_by_batchref(self, ref: str) -> Product | None:
        row = self._connection.execute(
            "SELECT sku FROM batches WHERE reference = ?", (ref,)
        ).fetchone()
        return None if row is None else self.get(row[0])

    def add(self, product: Product) -> None:
        self._tracked(product)
        self.save(product)

    def save(self, product: Product) -> None:
        """Write the product's batches and allocations (replacing what was stored)."""
        db = self._connection
        db.execute("DELETE FROM allocations WHERE sku = ?", (product.sku,))
        for batch in product.batches:
            db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
                (
                    batch.reference,
                    batch.sku,
                    batch.purchased_quantity,
                    batch.eta.isoformat() if batch.eta else None,
                ),
            )
            db.executemany(
                "INSERT INTO allocations VALUES (?, ?, ?, ?)",
                [(line.orderid, line.sku, line.qty, batch.reference) for line in batch.allocations],
            )

    def _tracked(self, product: Product) -> Product:
        self._track(product)  # type: ignore[operator]
        return product


class Notifications:
    """Where notifications go (e-mail, chat...); handlers ask for one by this type."""

    def send(self, destination: str, message: str) -> None:
        raise NotImplementedError


class InMemoryNotifications(Notifications):
    """Notifications kept in memory (what a test, or a demo, wants to look at)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, destination: str, message: str) -> None:
        self.sent.append((destination, message))

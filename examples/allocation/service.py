"""The service layer: the unit of work and the handlers of commands and events.

Each handler takes its message first, then the collaborators it needs, by name (`uow`, `bus`)
or by type (`Notifications`); `bootstrap` provides them once and the dispatcher binds them
when it registers the handler. No handler collects events or calls another handler by hand:
a unit of work dispatches its products' events after its commit, and the dispatcher
(`nested="queue"`) runs them after the command, first in first out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from allocation.adapters import Notifications, ProductRepository
from allocation.domain import (
    Allocate,
    Allocated,
    Batch,
    ChangeBatchQuantity,
    CreateBatch,
    Deallocated,
    OrderLine,
    OutOfStock,
    Product,
)
from domainbus import UnitOfWork


class InvalidSku(Exception):
    pass


class ProductsUnitOfWork(UnitOfWork):
    """domainbus's unit of work with the products repository on its connection."""

    def __init__(self, dispatcher: Any, connection: sqlite3.Connection) -> None:
        super().__init__(dispatcher, connection)
        self.products = ProductRepository(connection, self.track)


UnitOfWorkFactory = Callable[[], ProductsUnitOfWork]


# -- command handlers ----------------------------------------------------------------------


def add_batch(cmd: CreateBatch, uow: UnitOfWorkFactory) -> None:
    with uow() as work:
        product = work.products.get(cmd.sku)
        if product is None:
            product = Product(cmd.sku)
        product.batches.append(Batch(cmd.ref, cmd.sku, cmd.qty, cmd.eta))
        work.products.add(product)


def allocate(cmd: Allocate, uow: UnitOfWorkFactory) -> str | None:
    """The batch the line went to, or None when out of stock (OutOfStock is recorded)."""
    line = OrderLine(cmd.orderid, cmd.sku, cmd.qty)
    with uow() as work:
        product = work.products.get(line.sku)
        if product is None:
            raise InvalidSku(f"Invalid sku {line.sku}")
        batchref = product.allocate(line)
        work.products.save(product)
    return batchref


def change_batch_quantity(cmd: ChangeBatchQuantity, uow: UnitOfWorkFactory) -> None:
    with uow() as work:
        product = work.products.get_by_batchref(cmd.ref)
        if product is None:
            raise InvalidSku(f"Invalid batch {cmd.ref}")
        product.change_batch_quantity(cmd.ref, cmd.qty)
        work.products.save(product)


# -- event handlers ------------------------------------------------------------------------


def send_out_of_stock_notification(event: OutOfStock, notifications: Notifications) -> None:
    notifications.send("stock@made.com", f"Out of stock for {event.sku}")


def reallocate(event: Deallocated, bus: Any) -> None:
    """A deallocated line is allocated again: a nested command, run at once."""
    bus.execute(Allocate(event.orderid, event.sku, event.qty))


def add_allocation_to_read_model(event: Allocated, uow: UnitOfWorkFactory) -> None:
    with uow() as work:
        assert work.connection is not None
        work.connection.execute(
            "INSERT OR REPLACE INTO allocations_view VALUES (?, ?, ?)",
            (event.orderid, event.sku, event.batchref),
        )


def remove_allocation_from_read_model(event: Deallocated, uow: UnitOfWorkFactory) -> None:
    with uow() as work:
        assert work.connection is not None
        work.connection.execute(
            "DELETE FROM allocations_view WHERE orderid = ? AND sku = ?",
            (event.orderid, event.sku),
        )


COMMAND_HANDLERS: dict[type, Callable[..., Any]] = {
    CreateBatch: add_batch,
    Allocate: allocate,
    ChangeBatchQuantity: change_batch_quantity,
}
EVENT_HANDLERS: dict[type, list[Callable[..., Any]]] = {
    Allocated: [add_allocation_to_read_model],
    Deallocated: [remove_allocation_from_read_model, reallocate],
    OutOfStock: [send_out_of_stock_notification],
}

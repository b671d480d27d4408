"""examples/allocation: the cosmic-python allocation service on domainbus, on both backends
(the book's handler tests, plus the order in which the messages ran)."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from allocation import adapters, bootstrap, domain, service


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(tmp_path / "allocation.db")
    yield db
    db.close()


@pytest.fixture
def notifications() -> adapters.InMemoryNotifications:
    return adapters.InMemoryNotifications()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def bus(
    backend: ModuleType,
    connection: sqlite3.Connection,
    notifications: adapters.InMemoryNotifications,
    recorder: Recorder,
) -> Any:
    log = logging.getLogger(f"allocation-test-{id(recorder)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(recorder)
    return bootstrap.bootstrap(
        connection, notifications, dispatcher_class=backend.Dispatcher, log=log
    )


def available(connection: sqlite3.Connection, ref: str) -> int:
    (purchased,) = connection.execute(
        "SELECT purchased_quantity FROM batches WHERE reference = ?", (ref,)
    ).fetchone()
    (allocated,) = connection.execute(
        "SELECT COALESCE(SUM(qty), 0) FROM allocations WHERE batchref = ?", (ref,)
    ).fetchone()
    return int(purchased - allocated)


def view(connection: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return connection.execute(
        "SELECT orderid, sku, batchref FROM allocations_view ORDER BY orderid"
    ).fetchall()


def test_add_batch_for_new_and_existing_product(bus: Any, connection: sqlite3.Connection) -> None:
    assert bus.execute(domain.CreateBatch("b1", "GARISH-RUG", 100)) is None
    bus.execute(domain.CreateBatch("b2", "GARISH-RUG", 99))
    refs = connection.execute("SELECT reference FROM batches WHERE sku = 'GARISH-RUG'").fetchall()
    assert sorted(refs) == [("b1",), ("b2",)]


def test_allocate_returns_the_batch_and_updates_the_read_model(
    bus: Any, connection: sqlite3.Connection
) -> None:
    bus.execute(domain.CreateBatch("batch1", "COMPLICATED-LAMP", 100))
    assert bus.execute(domain.Allocate("o1", "COMPLICATED-LAMP", 10)) == "batch1"
    assert available(connection, "batch1") == 90
    assert view(connection) == [("o1", "COMPLICATED-LAMP", "batch1")]


def test_invalid_sku_propagates_with_a_note_naming_the_handler(
    bus: Any, connection: sqlite3.Connection, recorder: Recorder
) -> None:
    bus.execute(domain.CreateBatch("b1", "AREALSKU", 100))
    with pytest.raises(service.InvalidSku, match="Invalid sku NONEXISTENTSKU") as info:
        bus.execute(domain.Allocate("o1", "NONEXISTENTSKU", 10))
    assert info.value.__notes__ == [
        "domainbus: raised by command handler allocation.service.allocate for Allocate"
    ]
    assert recorder.lines[-1].startswith("command Allocate(orderid='o1'")
    assert connection.execute("SELECT COUNT(*) FROM allocations").fetchone() == (0,)


def test_out_of_stock_sends_a_notification(
    bus: Any, notifications: adapters.InMemoryNotifications
) -> None:
    bus.execute(domain.CreateBatch("b1", "POPULAR-CURTAINS", 9))
    assert bus.execute(domain.Allocate("o1", "POPULAR-CURTAINS", 10)) is None
    assert notifications.sent == [("stock@made.com", "Out of stock for POPULAR-CURTAINS")]


def test_change_batch_quantity_reallocates_in_fifo_order(
    bus: Any, connection: sqlite3.Connection, recorder: Recorder
) -> None:
    history = [
        domain.CreateBatch("batch1", "INDIFFERENT-TABLE", 50),
        domain.CreateBatch("batch2", "INDIFFERENT-TABLE", 50, date.today()),
        domain.Allocate("order1", "INDIFFERENT-TABLE", 20),
        domain.Allocate("order2", "INDIFFERENT-TABLE", 20),
    ]
    for command in history:
        bus.execute(command)
    assert (available(connection, "batch1"), available(connection, "batch2")) == (10, 50)
    seen: list[str] = []
    bus.register_handler(domain.DomainEvent, lambda e: seen.append(type(e).__name__))
    recorder.lines.clear()

    bus.execute(domain.ChangeBatchQuantity("batch1", 25))

    # order2 is deallocated (25 - 20 = 5 left) and goes to the next batch
    assert (available(connection, "batch1"), available(connection, "batch2")) == (5, 30)
    assert view(connection) == [
        ("order1", "INDIFFERENT-TABLE", "batch1"),
        ("order2", "INDIFFERENT-TABLE", "batch2"),
    ]
    # the command, its event, then the nested command its handler ran, then that one's event
    assert [line.split("(")[0] for line in recorder.lines] == [
        "executing ChangeBatchQuantity",
        "executing Allocate",
    ]
    assert seen == ["Deallocated", "Allocated"]


def test_handlers_got_their_dependencies_at_registration(bus: Any) -> None:
    assert bus.command_handler_for(domain.Allocate) is service.allocate
    [handler] = bus.handlers_for(domain.OutOfStock)
    assert handler == service.send_out_of_stock_notification
    assert handler.__qualname__ == "send_out_of_stock_notification"

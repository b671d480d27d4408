"""A unit of work with an outbox, inside a "queue"-mode call (a command, or an event handler):
its events are only appended to the dispatcher's FIFO when it commits, so its outbox rows must
stay pending until the FIFO has really dispatched them (pure/commands.py rule 5, uow.py).

Before the fix the unit of work settled (held) its rows as delivered as soon as it had queued
its events: a failure later in the FIFO, or a process dying before the drain, lost them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox
from domainbus.uow import AsyncUnitOfWork, UnitOfWork


class Noted(DomainEvent):
    text: str


class Start(DomainEvent):
    text: str


class Boom(Exception):
    pass


CODEC = EventCodec(Noted, Start)


class Place:
    """A command."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SqliteOutbox]:
    store = SqliteOutbox(tmp_path / "app.db", CODEC)
    yield store
    store.close()


def relayed(outbox: SqliteOutbox, make_dispatcher: Any) -> list[str]:
    """What a fresh process's relay delivers (rows left over, claimed or not)."""
    seen: list[str] = []
    later = make_dispatcher()
    later.register_handler(Noted, lambda e: seen.append(e.text))
    outbox.relay(later, take_over=True)
    return seen


def commit_two(d: Any, outbox: SqliteOutbox) -> None:
    """A unit of work recording Noted("a"), Noted("b") and committing."""
    with UnitOfWork(d, outbox.connection, outbox=outbox) as uow:
        uow.record(Noted("a"))
        uow.record(Noted("b"))


@pytest.mark.parametrize("entry", ["execute", "dispatch"])
def test_rows_stay_pending_until_the_fifo_dispatched_them(
    make_dispatcher: Any, outbox: SqliteOutbox, entry: str
) -> None:
    d = make_dispatcher(nested="queue")
    pending_while_handling: list[tuple[str, int]] = []

    def on_noted(event: Noted) -> None:
        outbox.flush()  # a commit on the outbox settles what was delivered by then
        pending_while_handling.append((event.text, outbox.pending()))

    d.register_handler(Noted, on_noted)
    d.register_command_handler(Place, lambda c: commit_two(d, outbox))
    d.register_handler(Start, lambda e: commit_two(d, outbox))
    if entry == "execute":
        d.execute(Place())
    else:
        d.dispatch(Start("go"))
    assert pending_while_handling == [("a", 2), ("b", 2)]
    outbox.flush()
    assert outbox.pending() == 0  # delivered once the FIFO drained
    assert relayed(outbox, make_dispatcher) == []


def test_a_command_failing_after_its_commit_leaves_the_rows_for_relay(
    make_dispatcher: Any, outbox: SqliteOutbox
) -> None:
    d = make_dispatcher(nested="queue")
    seen: list[str] = []
    d.register_handler(Noted, lambda e: seen.append(e.text))

    def place(command: Place) -> None:
        commit_two(d, outbox)
        raise Boom("after the commit")

    d.register_command_handler(Place, place)
    with pytest.raises(Boom) as info:
        d.execute(Place())
    assert seen == []
    assert "domainbus: 2 queued event(s) were not dispatched" in info.value.__notes__
    assert any("outbox" in note and "relay()" in note for note in info.value.__notes__)
    outbox.flush()
    assert outbox.pending() == 2
    assert relayed(outbox, make_dispatcher) == ["a", "b"]


@pytest.mark.parametrize("entry", ["execute", "dispatch", "dispatch_batch"])
def test_a_failing_event_handler_in_the_fifo_leaves_the_rows_for_relay(
    make_dispatcher: Any, outbox: SqliteOutbox, entry: str
) -> None:
    d = make_dispatcher(nested="queue")
    seen: list[str] = []

    def on_noted(event: Noted) -> None:
        if event.text == "a":
            raise Boom("a")
        seen.append(event.text)

    d.register_handler(Noted, on_noted)
    d.register_command_handler(Place, lambda c: commit_two(d, outbox))
    d.register_handler(Start, lambda e: commit_two(d, outbox))
    with pytest.raises(Boom):
        if entry == "execute":
            d.execute(Place())
        elif entry == "dispatch":
            d.dispatch(Start("go"))
        else:
            d.dispatch_batch([Start("go")])
    assert seen == []
    outbox.flush()
    assert outbox.pending() == 2  # "a" failed, "b" was never dispatched
    assert relayed(outbox, make_dispatcher) == ["a", "b"]


def test_collected_failures_leave_the_rows_for_relay(
    make_dispatcher: Any, outbox: SqliteOutbox
) -> None:
    d = make_dispatcher(nested="queue", on_error="collect")
    seen: list[str] = []

    def on_noted(event: Noted) -> None:
        if event.text == "a":
            raise Boom("a")
        seen.append(event.text)

    d.register_handler(Noted, on_noted)
    d.register_command_handler(Place, lambda c: commit_two(d, outbox))
    with pytest.raises(ExceptionGroup):
        d.execute(Place())
    assert seen == ["b"]
    outbox.flush()
    assert outbox.pending() == 2  # which one failed is not known here: both go to relay


def test_a_batch_settles_each_events_units_of_work_after_its_drain(
    make_dispatcher: Any, outbox: SqliteOutbox
) -> None:
    d = make_dispatcher(nested="queue")

    def on_start(event: Start) -> None:
        with UnitOfWork(d, outbox.connection, outbox=outbox) as uow:
            uow.record(Noted(event.text))
        if event.text == "second":
            raise Boom("second")

    d.register_handler(Start, on_start)
    d.register_handler(Noted, lambda e: None)
    with pytest.raises(Boom):
        d.dispatch_batch([Start("first"), Start("second")])
    outbox.flush()
    # the first event's unit of work was drained and settled; the second one's was not
    assert relayed(outbox, make_dispatcher) == ["second"]


def test_immediate_mode_is_unchanged(make_dispatcher: Any, outbox: SqliteOutbox) -> None:
    d = make_dispatcher()
    seen: list[str] = []
    d.register_handler(Noted, lambda e: seen.append(e.text))
    d.register_command_handler(Place, lambda c: commit_two(d, outbox))
    d.execute(Place())
    assert seen == ["a", "b"]
    outbox.flush()
    assert outbox.pending() == 0


def test_async_unit_of_work_in_a_queued_async_call(
    make_dispatcher: Any, outbox: SqliteOutbox
) -> None:
    d = make_dispatcher(nested="queue")
    seen: list[str] = []

    async def on_noted(event: Noted) -> None:
        if event.text == "a":
            raise Boom("a")
        seen.append(event.text)

    async def place(command: Place) -> None:
        async with AsyncUnitOfWork(d, outbox.connection, outbox=outbox) as uow:
            uow.record(Noted("a"))
            uow.record(Noted("b"))

    d.register_handler(Noted, on_noted)
    d.register_command_handler(Place, place)
    with pytest.raises(Boom):
        asyncio.run(d.execute_async(Place()))
    outbox.flush()
    assert outbox.pending() == 2

    d.unregister_handler(Noted, on_noted)
    d.register_handler(Noted, lambda e: seen.append(e.text))
    asyncio.run(d.execute_async(Place()))
    assert seen == ["a", "b"]
    outbox.flush()
    assert outbox.pending() == 2  # the two rows of the failed call, for relay


def test_without_an_outbox_the_writes_commit_as_before(
    make_dispatcher: Any, tmp_path: Path
) -> None:
    connection = sqlite3.connect(tmp_path / "plain.db")
    connection.execute("CREATE TABLE t (x)")
    d = make_dispatcher(nested="queue")
    seen: list[str] = []
    d.register_handler(Noted, lambda e: seen.append(e.text))

    def place(command: Place) -> None:
        with UnitOfWork(d, connection) as uow:
            connection.execute("INSERT INTO t VALUES (1)")
            uow.record(Noted("a"))

    d.register_command_handler(Place, place)
    d.execute(Place())
    assert seen == ["a"]
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (1,)
    connection.close()


def test_the_after_drain_hook(make_dispatcher: Any) -> None:
    """`_after_drain(callback)`: only inside an outermost "queue" call; called once the FIFO
    is empty, with None, or with what stopped the call (or was collected first)."""
    log: list[object] = []
    assert make_dispatcher(nested="queue")._after_drain(log.append) is False
    immediate = make_dispatcher()
    immediate.register_command_handler(Place, lambda c: immediate._after_drain(log.append))
    assert immediate.execute(Place()) is False

    d = make_dispatcher(nested="queue")
    d.register_handler(Noted, lambda e: log.append(e.text))

    def place(command: Place) -> bool:
        d.dispatch(Noted("queued"))
        registered = d._after_drain(lambda failure: log.append(("drained", failure)))
        if command.fail:
            raise Boom("stop")
        return bool(registered)

    d.register_command_handler(Place, place)
    assert d.execute(Place()) is True
    assert log == ["queued", ("drained", None)]
    log.clear()
    with pytest.raises(Boom) as info:
        d.execute(Place(fail=True))
    assert log == [("drained", info.value)]
    log.clear()

    collecting = make_dispatcher(nested="queue", on_error="collect")

    def failing(event: Noted) -> None:
        raise Boom(event.text)

    collecting.register_handler(Noted, failing)
    collecting.register_handler(
        Start, lambda e: collecting._after_drain(lambda f: log.append(("drained", f)))
    )

    def start(event: Start) -> None:
        collecting.dispatch(Noted(event.text))

    collecting.register_handler(Start, start)
    with pytest.raises(ExceptionGroup) as group:
        collecting.dispatch_batch([Start("one"), Start("two")])
    first, second = group.value.exceptions
    assert log == [("drained", first), ("drained", second)]

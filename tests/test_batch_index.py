"""The delivery contract: `exc.batch_index` out of dispatch_batch, and what the relay makes of it.

Rule 8 (`domainbus.pure.dispatcher`): an exception out of `dispatch_batch` /
`dispatch_batch_async` carries the batch index of the event it escaped from. Rule 12: the relay
reads only that, never how far an iterator got, so a target that consumes the batch eagerly
(a wrapper, a broker publisher) cannot make it mark undelivered events delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox


class Numbered(DomainEvent, kw_only=True):
    n: int


class Other(DomainEvent, kw_only=True):
    n: int


CODEC = EventCodec(Numbered, Other)


class Poison(Exception):
    pass


class SlotsError(Exception):
    """An exception that refuses the attribute (as a C type without a __dict__ would)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "batch_index":
            raise AttributeError(name)
        super().__setattr__(name, value)


def events(count: int) -> list[Numbered]:
    return [Numbered(n=n) for n in range(count)]


def failing_on(*bad: int) -> Any:
    def handler(event: Numbered) -> None:
        if event.n in bad:
            raise Poison(f"poison {event.n}")

    return handler


# -- rule 8: the attribute --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [list, tuple, iter])
def test_raise_carries_the_failing_events_index(backend: ModuleType, shape: Any) -> None:
    dispatcher = backend.Dispatcher()
    calls: list[int] = []
    dispatcher.register_handler(Numbered, lambda e: calls.append(e.n))
    dispatcher.register_handler(Numbered, failing_on(4))
    with pytest.raises(Poison) as info:
        dispatcher.dispatch_batch(shape(events(10)))
    assert info.value.batch_index == 4
    assert calls == [0, 1, 2, 3, 4]  # the failing event partly: its earlier handler ran
    assert any("at batch index 4" in note for note in info.value.__notes__)  # the note stays


def test_raise_async_carries_the_index(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Numbered, failing_on(3))

    async def later(event: Numbered) -> None:
        await asyncio.sleep(0)
        if event.n == 6:
            raise Poison("late")

    for concurrent in (False, True):
        with pytest.raises(Poison) as info:
            asyncio.run(dispatcher.dispatch_batch_async(events(10), concurrent=concurrent))
        assert info.value.batch_index == 3
    dispatcher.clear()
    dispatcher.register_handler(Numbered, later)
    for concurrent in (False, True):
        with pytest.raises(Poison) as info:
            asyncio.run(dispatcher.dispatch_batch_async(iter(events(10)), concurrent=concurrent))
        assert info.value.batch_index == 6


def test_collect_gives_every_member_its_index(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(on_error="collect")
    dispatcher.register_handler(Numbered, failing_on(1, 7))
    dispatcher.register_handler(DomainEvent, failing_on(7))
    with pytest.raises(ExceptionGroup) as info:
        dispatcher.dispatch_batch(events(9))
    assert [exc.batch_index for exc in info.value.exceptions] == [1, 7, 7]
    assert not hasattr(info.value, "batch_index")
    with pytest.raises(ExceptionGroup) as async_info:
        asyncio.run(dispatcher.dispatch_batch_async(events(9)))
    assert [exc.batch_index for exc in async_info.value.exceptions] == [1, 7, 7]


def test_callback_sees_the_index(backend: ModuleType) -> None:
    seen: list[int] = []
    dispatcher = backend.Dispatcher(on_error=lambda exc, e, h: seen.append(exc.batch_index))
    dispatcher.register_handler(Numbered, failing_on(2, 5))
    assert dispatcher.dispatch_batch(events(8)) == 8
    assert seen == [2, 5]


def test_on_unhandled_failure_carries_the_index(backend: ModuleType) -> None:
    def unhandled(event: object) -> None:
        raise Poison("no handler")

    dispatcher = backend.Dispatcher(on_unhandled=unhandled)
    dispatcher.register_handler(Numbered, lambda e: None)
    batch: list[object] = [*events(3), Other(n=3), *events(2)]
    with pytest.raises(Poison) as info:
        dispatcher.dispatch_batch(batch)
    assert info.value.batch_index == 3
    with pytest.raises(Poison) as async_info:
        asyncio.run(dispatcher.dispatch_batch_async(batch))
    assert async_info.value.batch_index == 3


def test_queued_nested_failure_belongs_to_the_event_that_queued_it(backend: ModuleType) -> None:
    for policy in ("raise", "collect"):
        dispatcher = backend.Dispatcher(nested="queue", on_error=policy)

        def outer(event: Numbered, dispatcher: Any = dispatcher) -> None:
            if event.n == 5:
                dispatcher.dispatch(Other(n=event.n))

        dispatcher.register_handler(Numbered, outer)
        dispatcher.register_handler(Other, failing_on(5))
        with pytest.raises((Poison, ExceptionGroup)) as info:
            dispatcher.dispatch_batch(events(8))
        failures = info.value.exceptions if policy == "collect" else (info.value,)
        assert [exc.batch_index for exc in failures] == [5]


def test_nested_batch_index_is_the_outer_one(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    inner = backend.Dispatcher()
    inner.register_handler(Numbered, failing_on(1))
    dispatcher.register_handler(Other, lambda e: inner.dispatch_batch(events(3)))
    with pytest.raises(Poison) as info:
        dispatcher.dispatch_batch([Other(n=0), Other(n=1)])
    assert info.value.batch_index == 0  # the outer batch's event, not the inner one's


def test_iterator_failure_has_no_index(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Numbered, lambda e: None)

    def broken() -> Iterator[Numbered]:
        yield from events(3)
        raise Poison("iterator")

    with pytest.raises(Poison) as info:
        dispatcher.dispatch_batch(broken())
    assert not hasattr(info.value, "batch_index")  # no event of the batch failed


def test_single_dispatch_sets_no_index(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Numbered, failing_on(0))
    with pytest.raises(Poison) as info:
        dispatcher.dispatch(Numbered(n=0))
    assert not hasattr(info.value, "batch_index")


def test_an_exception_without_a_dict_is_left_as_is(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()

    def handler(event: Numbered) -> None:
        if event.n == 1:
            raise SlotsError("slots")

    dispatcher.register_handler(Numbered, handler)
    with pytest.raises(SlotsError) as info:
        dispatcher.dispatch_batch(events(3))
    assert not hasattr(info.value, "batch_index")
    with pytest.raises(SlotsError):
        asyncio.run(dispatcher.dispatch_batch_async(events(3)))


# -- rule 12: what the relay delivers ---------------------------------------------------------


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SqliteOutbox]:
    box = SqliteOutbox(tmp_path / "relay.db", CODEC, max_attempts=3)
    box.begin()
    box.append([CODEC.encode(e) for e in events(10)], claimed=False)
    box.commit()
    yield box
    box.close()


def rows(outbox: SqliteOutbox) -> dict[int, int]:
    """{event n: attempts} of the rows still in the outbox."""
    found = outbox.connection.execute("SELECT payload, attempts FROM domainbus_outbox").fetchall()
    return {CODEC.decode(payload).n: attempts for payload, attempts in found}


class EagerWrapper:
    """A dispatcher wrapper that takes the whole batch first (as a broker publisher would)."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.seen: list[int] = []

    def dispatch_batch(self, events: Iterable[Any]) -> int:
        batch = list(events)
        self.seen += [e.n for e in batch]
        return int(self.dispatcher.dispatch_batch(batch))

    async def dispatch_batch_async(self, events: Iterable[Any], *, concurrent: bool = False) -> int:
        batch = list(events)
        self.seen += [e.n for e in batch]
        return int(await self.dispatcher.dispatch_batch_async(batch, concurrent=concurrent))


class DownBroker:
    """A publisher whose broker is down: it raises with no batch_index."""

    def __init__(self) -> None:
        self.calls = 0

    def dispatch_batch(self, events: Iterable[Any]) -> int:
        list(events)
        self.calls += 1
        raise ConnectionError("broker is down")

    async def dispatch_batch_async(self, events: Iterable[Any], *, concurrent: bool = False) -> int:
        return self.dispatch_batch(events)


def test_eager_target_failing_on_event_2_delivers_exactly_rows_0_and_1(
    backend: ModuleType, outbox: SqliteOutbox
) -> None:
    dispatcher = backend.Dispatcher()
    delivered: list[int] = []
    dispatcher.register_handler(Numbered, failing_on(2))
    dispatcher.register_handler(Numbered, lambda e: delivered.append(e.n))
    wrapper = EagerWrapper(dispatcher)
    with pytest.raises(Poison) as info:
        outbox.relay(wrapper)
    assert wrapper.seen == list(range(10))  # the iterator was exhausted before the failure
    assert delivered == [0, 1]
    assert rows(outbox) == {2: 1, **{n: 0 for n in range(3, 10)}}  # 2 failed, 3-9 pending
    notes = "\n".join(info.value.__notes__)
    assert "outbox row 3, which stays pending; 2 other event(s)" in notes  # row ids start at 1


def test_eager_target_async_twin(backend: ModuleType, outbox: SqliteOutbox) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Numbered, failing_on(2))
    for concurrent in (False, True):
        with pytest.raises(Poison):
            asyncio.run(outbox.relay_async(EagerWrapper(dispatcher), concurrent=concurrent))
    assert rows(outbox) == {2: 2, **{n: 0 for n in range(3, 10)}}


def test_a_target_raising_without_batch_index_delivers_nothing(outbox: SqliteOutbox) -> None:
    broker = DownBroker()
    for _ in range(5):  # more than max_attempts: an outage dead-letters nothing
        with pytest.raises(ConnectionError) as info:
            outbox.relay(broker)
        assert "none of its 10 event(s) counts as delivered" in "\n".join(info.value.__notes__)
    assert broker.calls == 5
    assert rows(outbox) == {n: 0 for n in range(10)}
    assert outbox.dead_letters() == []


def test_a_target_raising_without_batch_index_async(outbox: SqliteOutbox) -> None:
    for _ in range(4):
        with pytest.raises(ConnectionError):
            asyncio.run(outbox.relay_async(DownBroker()))
    assert rows(outbox) == {n: 0 for n in range(10)}


@pytest.mark.parametrize("index", [-1, 10, "2", True, None])
def test_an_out_of_range_or_odd_batch_index_counts_as_none_delivered(
    outbox: SqliteOutbox, index: object
) -> None:
    class Liar:
        def dispatch_batch(self, events: Iterable[Any]) -> int:
            exc = Poison("odd")
            exc.batch_index = index  # type: ignore[attr-defined]
            raise exc

    with pytest.raises(Poison):
        outbox.relay(Liar())
    assert rows(outbox) == {n: 0 for n in range(10)}


def test_slots_exception_releases_the_batch(backend: ModuleType, outbox: SqliteOutbox) -> None:
    dispatcher = backend.Dispatcher()

    def handler(event: Numbered) -> None:
        if event.n == 4:
            raise SlotsError("slots")

    dispatcher.register_handler(Numbered, handler)
    with pytest.raises(SlotsError):
        outbox.relay(dispatcher)
    assert rows(outbox) == {n: 0 for n in range(10)}  # nothing known delivered: all pending


def test_collect_relay_counts_the_members(backend: ModuleType, outbox: SqliteOutbox) -> None:
    dispatcher = backend.Dispatcher(on_error="collect")
    dispatcher.register_handler(Numbered, failing_on(3, 8))
    dispatcher.register_handler(DomainEvent, failing_on(8))  # two failures, one attempt
    with pytest.raises(ExceptionGroup):
        outbox.relay(EagerWrapper(dispatcher))
    assert rows(outbox) == {3: 1, 8: 1}


def test_collect_relay_with_an_interrupt_delivers_nothing_it_cannot_vouch_for(
    backend: ModuleType, outbox: SqliteOutbox
) -> None:
    dispatcher = backend.Dispatcher(on_error="collect")
    dispatcher.register_handler(Numbered, failing_on(1))

    def interrupt(event: Numbered) -> None:
        if event.n == 5:
            raise KeyboardInterrupt

    dispatcher.register_handler(Numbered, interrupt)
    with pytest.raises(KeyboardInterrupt):
        outbox.relay(dispatcher)
    assert rows(outbox) == {n: 0 for n in range(10)}  # event 1's failure was dropped: redo all


def test_an_interrupt_under_raise_delivers_the_events_before_it(
    backend: ModuleType, outbox: SqliteOutbox
) -> None:
    dispatcher = backend.Dispatcher()

    def interrupt(event: Numbered) -> None:
        if event.n == 5:
            raise KeyboardInterrupt

    dispatcher.register_handler(Numbered, interrupt)
    with pytest.raises(KeyboardInterrupt):
        outbox.relay(dispatcher)
    assert rows(outbox) == {n: 0 for n in range(5, 10)}  # no attempt counted for row 5

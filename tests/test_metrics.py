"""Per-handler metrics (rule 16, `domainbus.pure.metrics`), on both backends: what is counted,
on which paths, what the snapshot holds, and what reset, unregistering and the GC do."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref
from types import ModuleType
from typing import Any

import pytest


class Base:
    pass


class Child(Base):
    pass


class Other:
    pass


class Boom(Exception):
    pass


def noop(event: object) -> None:
    pass


def boom(event: object) -> None:
    raise Boom("no")


def rows(dispatcher: Any) -> dict[tuple[str, str], tuple[int, int]]:
    """(event type, handler name) -> (calls, failures); handler names without the module."""
    return {
        (r["event_type"], r["handler"].rsplit(".", 1)[-1]): (r["calls"], r["failures"])
        for r in dispatcher.metrics()
    }


def test_off_by_default(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Base, noop)
    dispatcher.dispatch(Base())
    dispatcher.dispatch_batch([Base(), Child()])
    assert dispatcher.metrics_enabled is False
    assert dispatcher.metrics() == []


def test_option_is_checked(backend: ModuleType) -> None:
    with pytest.raises(TypeError, match="metrics must be a bool, not str"):
        backend.Dispatcher(metrics="yes")
    assert backend.Dispatcher(metrics=True).metrics_enabled is True


def test_counts_per_concrete_class_and_handler(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(Base, noop)
    dispatcher.register_handler(Child, boom)
    dispatcher.register_handler(Other, noop)
    assert dispatcher.dispatch(Base()) == 1
    dispatcher.dispatch_batch([Base(), Other(), Base()])
    with pytest.raises(Boom):
        dispatcher.dispatch(Child())  # noop first (priority 0, registered first), then boom
    assert rows(dispatcher) == {
        ("Base", "noop"): (3, 0),
        ("Other", "noop"): (1, 0),
        ("Child", "noop"): (1, 0),
        ("Child", "boom"): (1, 1),
    }


def test_snapshot_is_plain_data(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(Base, noop)
    dispatcher.dispatch_batch([Base()] * 10)
    snapshot = dispatcher.metrics()
    assert type(snapshot) is list
    (record,) = snapshot
    assert type(record) is dict
    assert set(record) == {"event_type", "handler", "calls", "failures", "timed_calls", "total_ns"}
    assert record["event_type"] == "Base"
    assert record["handler"] == f"{__name__}.noop"
    assert (record["calls"], record["failures"]) == (10, 0)
    assert 1 <= record["timed_calls"] <= 10
    assert record["total_ns"] >= 0
    assert all(type(value) in (str, int) for value in record.values())
    assert json.loads(json.dumps(snapshot)) == snapshot
    record["calls"] = 0  # a copy: the table is not changed through it
    assert dispatcher.metrics()[0]["calls"] == 10


def test_slowest_first_and_time_of_slow_handlers(backend: ModuleType) -> None:
    """A handler whose calls take 20 us or more is timed on every call; time is wall time."""
    dispatcher = backend.Dispatcher(metrics=True)

    def slow(event: object) -> None:
        time.sleep(0.002)

    dispatcher.register_handler(Base, noop)
    dispatcher.register_handler(Base, slow)
    dispatcher.dispatch_batch([Base()] * 5)
    first, second = dispatcher.metrics()
    assert first["handler"].endswith("slow")
    assert (first["calls"], first["timed_calls"]) == (5, 5)
    assert first["total_ns"] >= 5 * 2_000_000
    assert second["handler"].endswith("noop")


def test_fast_handlers_are_sampled(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(Base, noop)
    dispatcher.dispatch_batch([Base()] * 5000)
    (record,) = dispatcher.metrics()
    assert record["calls"] == 5000
    assert 1 <= record["timed_calls"] < 5000 // 16  # about one call in 64
    assert record["total_ns"] > 0


@pytest.mark.parametrize("policy", ["raise", "collect", "callback"])
def test_failures_whatever_on_error_does(backend: ModuleType, policy: str) -> None:
    seen: list[BaseException] = []
    on_error: Any = (
        (lambda exc, event, handler: seen.append(exc)) if policy == "callback" else policy
    )
    dispatcher = backend.Dispatcher(metrics=True, on_error=on_error)
    dispatcher.register_handler(Base, boom)
    dispatcher.register_handler(Base, noop)
    try:
        dispatcher.dispatch_batch([Base(), Base()])
    except Boom:
        assert policy == "raise"
    except ExceptionGroup:
        assert policy == "collect"
    expected = {"raise": (1, 1), "collect": (2, 2), "callback": (2, 2)}[policy]
    assert rows(dispatcher)[("Base", "boom")] == expected
    assert rows(dispatcher).get(("Base", "noop"), (0, 0)) == (expected[0] - (policy == "raise"), 0)


def test_a_coroutine_returned_to_sync_dispatch_is_a_failure(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True, on_error="collect")

    async def handler(event: object) -> None:
        pass

    dispatcher.register_handler(Base, handler)
    with pytest.raises(ExceptionGroup):
        dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "handler"): (1, 1)}


def test_a_base_exception_ends_a_call_without_a_failure(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)

    def interrupt(event: object) -> None:
        raise KeyboardInterrupt

    dispatcher.register_handler(Base, interrupt)
    with pytest.raises(KeyboardInterrupt):
        dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "interrupt"): (1, 0)}


def test_reset_and_switching(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Base, noop)
    dispatcher.dispatch(Base())  # the single-dispatch table is warm before metrics go on
    dispatcher.enable_metrics()
    assert dispatcher.metrics_enabled
    dispatcher.dispatch(Base())
    dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "noop"): (2, 0)}
    dispatcher.disable_metrics()
    dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "noop"): (2, 0)}  # kept, not counting
    dispatcher.enable_metrics()
    dispatcher.dispatch_batch([Base()])
    assert rows(dispatcher) == {("Base", "noop"): (3, 0)}
    dispatcher.reset_metrics()
    assert dispatcher.metrics() == []
    dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "noop"): (1, 0)}


def test_switching_inside_a_batch_takes_effect_from_the_next_event(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    order: list[str] = []

    def first(event: Any) -> None:
        order.append("first")
        if event == 0:
            dispatcher.enable_metrics()
        if event == 2:
            dispatcher.disable_metrics()

    def second(event: Any) -> None:
        order.append("second")

    dispatcher.register_handler(int, first)
    dispatcher.register_handler(int, second)
    dispatcher.dispatch_batch([0, 1, 2, 3])
    assert rows(dispatcher) == {("int", "first"): (2, 0), ("int", "second"): (2, 0)}


def test_nested_dispatch(backend: ModuleType) -> None:
    for nested in ("immediate", "queue"):
        dispatcher = backend.Dispatcher(metrics=True, nested=nested)

        def outer(event: object, dispatcher: Any = dispatcher) -> None:
            dispatcher.dispatch(Other())

        def inner(event: object) -> None:
            time.sleep(0.002)

        dispatcher.register_handler(Base, outer)
        dispatcher.register_handler(Other, inner)
        dispatcher.dispatch_batch([Base(), Base()])
        assert rows(dispatcher) == {("Base", "outer"): (2, 0), ("Other", "inner"): (2, 0)}
        times = {r["handler"].rsplit(".", 1)[-1]: r["total_ns"] for r in dispatcher.metrics()}
        if nested == "immediate":  # a handler's time includes the dispatch it makes
            assert times["outer"] >= times["inner"] >= 2 * 2_000_000
        else:
            assert times["outer"] < 2_000_000 <= times["inner"]


@pytest.mark.parametrize("concurrent", [False, True])
def test_async_paths(backend: ModuleType, concurrent: bool) -> None:
    dispatcher = backend.Dispatcher(metrics=True, on_error="collect")

    async def slow(event: object) -> None:
        await asyncio.sleep(0.002)

    async def failing(event: object) -> None:
        await asyncio.sleep(0)
        raise Boom("async")

    dispatcher.register_handler(Base, slow)
    dispatcher.register_handler(Child, failing)
    dispatcher.register_handler(Other, noop)

    async def main() -> None:
        await dispatcher.dispatch_async(Base(), concurrent=concurrent)
        await dispatcher.dispatch_batch_async([Base(), Other()], concurrent=concurrent)
        with pytest.raises(ExceptionGroup):
            await dispatcher.dispatch_batch_async([Child()], concurrent=concurrent)

    asyncio.run(main())
    assert rows(dispatcher) == {
        ("Base", "slow"): (2, 0),
        ("Other", "noop"): (1, 0),
        ("Child", "slow"): (1, 0),
        ("Child", "failing"): (1, 1),
    }
    by_name = {(r["event_type"], r["handler"].rsplit(".", 1)[-1]): r for r in dispatcher.metrics()}
    assert by_name["Base", "slow"]["timed_calls"] == 2  # async calls are all timed
    assert by_name["Base", "slow"]["total_ns"] >= 2 * 2_000_000  # until the awaitable is done


def test_async_queue_mode_goes_the_general_way(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True, nested="queue")

    async def outer(event: object) -> None:
        await dispatcher.dispatch_async(Other())

    dispatcher.register_handler(Base, outer)
    dispatcher.register_handler(Other, noop)
    asyncio.run(dispatcher.dispatch_batch_async([Base(), Base()]))
    assert rows(dispatcher) == {("Base", "outer"): (2, 0), ("Other", "noop"): (2, 0)}


def test_a_cancelled_async_call_counts_without_a_failure(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    started = asyncio.Event()

    async def forever(event: object) -> None:
        started.set()
        await asyncio.sleep(3600)

    dispatcher.register_handler(Base, forever)

    async def main() -> None:
        task = asyncio.ensure_future(dispatcher.dispatch_async(Base()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rows(dispatcher) == {("Base", "forever"): (1, 0)}


def test_unregistered_and_once_handlers_keep_their_rows(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(Base, noop)
    dispatcher.dispatch(Base())
    assert dispatcher.unregister_handler(Base, noop)
    dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "noop"): (1, 0)}
    for _ in range(3):  # one row per (class, handler name), however often it is registered
        dispatcher.register_handler(Base, boom, once=True)
        with pytest.raises(Boom):
            dispatcher.dispatch_batch([Base(), Base()])
    assert rows(dispatcher) == {("Base", "noop"): (1, 0), ("Base", "boom"): (3, 3)}


def test_weak_handlers(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)

    class Target:
        def handle(self, event: object) -> None:
            pass

    target = Target()
    dispatcher.register_handler(Base, target.handle, weak=True)
    dispatcher.dispatch(Base())
    del target
    gc.collect()
    dispatcher.dispatch(Base())
    assert rows(dispatcher) == {("Base", "handle"): (1, 0)}


def test_threads_lose_no_counts(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(Base, noop)

    def work() -> None:
        for _ in range(200):
            dispatcher.dispatch_batch([Base(), Child()] * 25)
            dispatcher.dispatch(Base())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rows(dispatcher) == {
        ("Base", "noop"): (4 * 200 * 26, 0),
        ("Child", "noop"): (4 * 200 * 25, 0),
    }


def test_batch_queue_consumer_counts(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(Base, noop)
    with backend.BatchQueue(dispatcher) as queue:
        for _ in range(100):
            queue.put(Base())
    assert rows(dispatcher) == {("Base", "noop"): (100, 0)}


def test_commands_are_not_counted(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_command_handler(Other, lambda command: 1)
    assert dispatcher.execute(Other()) == 1
    assert dispatcher.metrics() == []


def test_a_subclass_passes_the_option_on(backend: ModuleType) -> None:
    class Mine(backend.Dispatcher):  # type: ignore[name-defined,misc]
        def __init__(self, name: str, **options: Any) -> None:
            super().__init__(**options)
            self.name = name

    mine = Mine("x", metrics=True)
    mine.register_handler(Base, noop)
    mine.dispatch(Base())
    assert rows(mine) == {("Base", "noop"): (1, 0)}


def test_classes_are_told_apart_by_identity(backend: ModuleType) -> None:
    def make() -> type:
        class Same:
            pass

        return Same

    one, two = make(), make()
    dispatcher = backend.Dispatcher(metrics=True)
    dispatcher.register_handler(object, noop)
    dispatcher.dispatch_batch([one(), two(), two()])
    assert sorted(r["calls"] for r in dispatcher.metrics()) == [1, 2]


def test_rows_let_their_classes_go_at_reset_and_with_the_dispatcher(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher(metrics=True)
    Dynamic = type("Dynamic", (Base,), {})
    dispatcher.register_handler(Base, noop)
    dispatcher.dispatch(Dynamic())
    ref = weakref.ref(Dynamic)
    del Dynamic
    gc.collect()
    dispatcher.register_handler(Other, noop)  # the resolution cache lets it go (rule 3)
    gc.collect()
    assert ref() is not None  # the row holds it
    dispatcher.reset_metrics()
    gc.collect()
    assert ref() is None

    # a cycle through the table (a class whose handler holds the dispatcher) is collectable
    cyclic = backend.Dispatcher(metrics=True)
    Looped = type("Looped", (), {})
    cyclic.register_handler(Looped, lambda event, d=cyclic: None)
    cyclic.dispatch(Looped())
    refs = weakref.ref(Looped), weakref.ref(cyclic)
    del Looped, cyclic
    gc.collect()
    assert [r() for r in refs] == [None, None]

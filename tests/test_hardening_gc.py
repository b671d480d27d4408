"""Reference cycles through objects the Rust backend holds are collected (issue 10, item 6), on
both backends: suspended `dispatch_async` coroutines on both async paths, the registrations of
their plans, events queued in a `BatchQueue`, the dispatcher itself. Each test builds a cycle,
drops it and asserts (pydantic-core's `assert_gc` way) that the collector frees it.
"""

from __future__ import annotations

import gc
import types
import warnings
import weakref
from collections.abc import Callable, Generator
from types import ModuleType
from typing import Any

import pytest


class Event:
    pass


class Marker:
    pass


@types.coroutine
def pause() -> Generator[str, None, None]:
    yield "paused"


def assert_collected(build: Callable[[], weakref.ref[Any]]) -> None:
    """`build` makes a cycle and returns a weak reference into it; the GC must free it."""
    ref = build()
    for _ in range(3):
        gc.collect()
    assert ref() is None, gc.get_referrers(ref())


@pytest.mark.parametrize("nested", ["immediate", "queue"])  # the fast path, the general path
@pytest.mark.parametrize("how", ["unregister", "once", "clear"])
def test_suspended_dispatch_async_referring_to_itself(
    make_dispatcher: Any, nested: str, how: str
) -> None:
    d = make_dispatcher(nested=nested)  # stays alive, as in an application

    def build() -> weakref.ref[Any]:
        holder: dict[str, Any] = {"marker": Marker()}

        async def handler(event: object) -> None:
            if holder["coro"] is None:  # the handler refers back to its coroutine
                raise AssertionError
            await pause()

        d.register_handler(Event, handler, once=how == "once")
        coro = d.dispatch_async(Event())
        holder["coro"] = coro
        if coro.send(None) != "paused":
            raise AssertionError
        if how == "unregister":
            d.unregister_handler(Event, handler)
        elif how == "clear":
            d.clear()
        # now only the suspended coroutine keeps the registration, and so the handler
        return weakref.ref(holder["marker"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the coroutine is never finished
        assert_collected(build)
    assert d.handlers_for(Event) == ()


def test_plan_registrations_in_a_cycle(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    def build() -> weakref.ref[Any]:
        marker = Marker()

        def handler(event: object) -> None:
            pass

        handler.plan = d._plan(Event)  # type: ignore[attr-defined]
        handler.marker = marker  # type: ignore[attr-defined]
        d.register_handler(Event, handler)
        handler.plan = d._plan(Event)  # type: ignore[attr-defined]  # holds its registration
        d.clear()
        return weakref.ref(marker)

    assert_collected(build)


def test_events_queued_in_a_batch_queue(backend: ModuleType) -> None:
    d = backend.Dispatcher()

    def build() -> weakref.ref[Any]:
        q = backend.BatchQueue(d)
        event = Event()
        event.queue = q  # type: ignore[attr-defined]
        event.marker = Marker()  # type: ignore[attr-defined]
        q.put(event)
        return weakref.ref(event.marker)  # type: ignore[attr-defined]

    with pytest.warns(RuntimeWarning, match="a BatchQueue was freed with 1 undispatched event"):
        assert_collected(build)


def test_a_queue_freed_with_events_reports_them(backend: ModuleType) -> None:
    q = backend.BatchQueue(backend.Dispatcher())
    q.put_many([Event(), Event()])
    with pytest.warns(RuntimeWarning, match="freed with 2 undispatched event"):
        del q
        gc.collect()


def test_dispatcher_in_a_cycle_with_its_handlers_and_options(make_dispatcher: Any) -> None:
    def build() -> weakref.ref[Any]:
        marker = Marker()
        holder: dict[str, Any] = {"marker": marker}

        def on_error(*args: Any) -> None:
            holder.clear()

        d = make_dispatcher(on_error=on_error, on_unhandled=lambda e: holder)
        holder["d"] = d
        d.register_handler(Event, lambda e: holder, once=True)
        d.handler(Marker)(lambda e: holder)
        d.dispatch_batch([Event(), Marker()])
        return weakref.ref(marker)

    assert_collected(build)


def test_handler_decorator_in_a_cycle(make_dispatcher: Any) -> None:
    def build() -> weakref.ref[Any]:
        d = make_dispatcher()
        decorate = d.handler(Event)
        marker = Marker()

        @decorate
        def handler(event: object) -> None:
            if decorate is None or marker is None:  # refers to its decorator (and the marker)
                raise AssertionError

        d.dispatch(Event())
        return weakref.ref(marker)

    assert_collected(build)

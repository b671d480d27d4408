"""What `execute` drops is released at once, on both backends: the events its FIFO dispatched,
the exceptions its failures raised and what their tracebacks hold (no garbage collection and
no later call needed). The Rust `execute` is a METH_O entry: it has to tell PyO3 that the GIL
is held (`Python::attach`), or PyO3 defers every reference it drops to its next attach."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest


class Command:
    pass


class Event:
    pass


class Held:
    """Something only a failing handler's frame refers to (so its traceback keeps it)."""


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def no_gc() -> Iterator[None]:
    """Reference counting alone must release everything: no cycle is involved."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_events_a_queued_execute_dispatched_are_released(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    refs: list[weakref.ref[Event]] = []

    def handler(command: Command) -> None:
        event = Event()
        refs.append(weakref.ref(event))
        d.dispatch(event)

    d.register_handler(Event, lambda e: None)
    d.register_command_handler(Command, handler)
    for _ in range(100):
        d.execute(Command())
        assert refs[-1]() is None
    assert sum(ref() is not None for ref in refs) == 0


def test_event_failures_under_a_callback_are_released(make_dispatcher: Any) -> None:
    refs: list[weakref.ref[Held]] = []

    def failing(event: Event) -> None:
        held = Held()
        refs.append(weakref.ref(held))
        raise Boom

    d = make_dispatcher(nested="queue", on_error=lambda exc, event, handler: None)
    d.register_handler(Event, failing)
    d.register_command_handler(Command, lambda c: d.dispatch(Event()))
    for _ in range(100):
        d.execute(Command())
        assert refs[-1]() is None
    assert sum(ref() is not None for ref in refs) == 0


@pytest.mark.parametrize("nested", ["immediate", "queue"])
def test_a_command_handler_raising_repeatedly_is_released(
    make_dispatcher: Any, nested: str
) -> None:
    refs: list[weakref.ref[Held]] = []

    def failing(command: Command) -> None:
        held = Held()
        refs.append(weakref.ref(held))
        raise Boom

    d = make_dispatcher(nested=nested)
    d.register_command_handler(Command, failing)
    for _ in range(100):
        try:
            d.execute(Command())
        except Boom:
            pass
        assert refs[-1]() is None
    assert sum(ref() is not None for ref in refs) == 0


def test_collected_failures_are_released_with_their_group(make_dispatcher: Any) -> None:
    refs: list[weakref.ref[Held]] = []

    def failing(event: Event) -> None:
        held = Held()
        refs.append(weakref.ref(held))
        raise Boom

    d = make_dispatcher(nested="queue", on_error="collect")
    d.register_handler(Event, failing)
    d.register_command_handler(Command, lambda c: d.dispatch(Event()))
    for _ in range(100):
        try:
            d.execute(Command())
        except ExceptionGroup:
            pass
        assert refs[-1]() is None
    assert sum(ref() is not None for ref in refs) == 0

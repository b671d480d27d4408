"""Reference counts and garbage collection: no leaks on the hot path, cycles are collected."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import pytest

from domainbus import DomainEvent


class Msg(DomainEvent):
    pass


def noop(event: Any) -> None:
    pass


def test_million_dispatches_leave_refcounts_unchanged(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_handler(Msg, noop)
    event = Msg()
    d.dispatch_batch([event] * 1000)  # warm caches
    before = (sys.getrefcount(noop), sys.getrefcount(event), sys.getrefcount(Msg))
    batch = [event] * 10_000
    for _ in range(50):
        d.dispatch_batch(batch)
    for _ in range(500_000):
        d.dispatch(event)
    del batch
    after = (sys.getrefcount(noop), sys.getrefcount(event), sys.getrefcount(Msg))
    assert after == before


def test_failures_do_not_leak(make_dispatcher: Any) -> None:
    def failing(event: Any) -> None:
        raise ValueError

    for policy in ("raise", "collect"):
        d = make_dispatcher(on_error=policy)
        d.register_handler(Msg, failing)
        event = Msg()
        before = sys.getrefcount(event)
        for _ in range(1000):
            with pytest.raises((ValueError, ExceptionGroup)):
                d.dispatch(event)
        gc.collect()  # failures kept in a list form frame/traceback cycles in the pure backend
        assert sys.getrefcount(event) == before


def test_a_swallowed_failure_releases_the_event_at_once(make_dispatcher: Any) -> None:
    """An on_error callback that goes on: when `dispatch` returns, nothing of the failure (its
    traceback holds the event) is still held, not even queued for release by the next call
    into the extension (the Rust fast path runs without PyO3's attach count)."""
    seen: list[str] = []

    def failing(event: Any) -> None:
        raise ValueError

    def report(exc: BaseException, event: Any, handler: Any) -> None:
        seen.append(type(exc).__name__)

    d = make_dispatcher(on_error=report)
    d.register_handler(Msg, failing)
    d.register_handler(Msg, noop, once=True)  # a `once` claim drops a registration too
    event = Msg()
    before = sys.getrefcount(event)
    assert d.dispatch(event) == 2
    assert seen == ["ValueError"]
    assert sys.getrefcount(event) == before, "the failure still holds the event"
    for _ in range(100):
        d.dispatch(event)
    assert sys.getrefcount(event) == before


def test_handler_referring_to_its_dispatcher_is_collected(make_dispatcher: Any) -> None:
    class Service:
        def __init__(self) -> None:
            self.dispatcher = make_dispatcher(on_error=self.report)
            self.dispatcher.register_handler(Msg, self.on_msg)

        def on_msg(self, event: Any) -> None:
            pass

        def report(self, *args: Any) -> None:
            pass

    service = Service()
    service_ref = weakref.ref(service)
    dispatcher_ref = weakref.ref(service.dispatcher)
    del service
    gc.collect()
    assert service_ref() is None
    assert dispatcher_ref() is None


def test_weak_registration_callback_does_not_keep_dispatcher_alive(make_dispatcher: Any) -> None:
    class Listener:
        def on(self, event: Any) -> None:
            pass

    listener = Listener()
    d = make_dispatcher()
    d.register_handler(Msg, listener.on, weak=True)
    d_ref = weakref.ref(d)
    del d
    gc.collect()
    assert d_ref() is None
    del listener  # the weakref's callback must not crash on a dead dispatcher
    gc.collect()


def test_reentrant_handler_deleting_the_last_reference(make_dispatcher: Any) -> None:
    holder: dict[str, Any] = {"d": make_dispatcher()}

    def drop_dispatcher(event: Any) -> None:
        holder.clear()  # the dispatch in flight must keep what it needs alive
        gc.collect()

    holder["d"].register_handler(Msg, drop_dispatcher)
    holder["d"].register_handler(Msg, noop)
    assert holder["d"].dispatch_batch([Msg(), Msg()]) >= 1


@pytest.mark.parametrize("metrics", [False, True])
@pytest.mark.parametrize("removal", ["unregister_handler", "clear"])
def test_a_removed_handler_is_released_at_once(
    make_dispatcher: Any, removal: str, metrics: bool
) -> None:
    """After a dispatch, then `unregister_handler` or `clear()`, the dispatcher holds the handler
    no more (Rust's single-dispatch table, and the metrics' memo of resolved lists, kept it
    until a later dispatch of its class), so a `weak=True` registration of it vanishes with it."""
    d = make_dispatcher(metrics=metrics)

    def make() -> Any:
        def handler(event: Any) -> None:
            pass

        return handler

    handler = make()
    gone = weakref.ref(handler)
    d.register_handler(Msg, handler)
    d.dispatch(Msg())
    if removal == "clear":
        d.clear()
    else:
        d.unregister_handler(Msg, handler)
    d.register_handler(Msg, handler, weak=True)
    del handler
    gc.collect()
    assert gone() is None
    assert d.handlers_for(Msg) == ()

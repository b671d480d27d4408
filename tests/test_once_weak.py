"""Rule 6: `once` handlers run at most once; `weak` handlers vanish with their target."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest

from domainbus import DomainEvent


class Tick(DomainEvent):
    n: int = 0


def test_once_runs_once(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Tick, seen.append, once=True)
    assert d.dispatch_batch([Tick(n=1), Tick(n=2)]) == 1
    assert [e.n for e in seen] == [1]
    assert d.handlers_for(Tick) == ()


def test_once_is_removed_before_its_call_so_nested_dispatch_skips_it(make_dispatcher: Any) -> None:
    for nested in ("immediate", "queue"):
        d = make_dispatcher(nested=nested)
        calls: list[int] = []

        def once(event: Tick, d: Any = d, calls: list[int] = calls) -> None:
            calls.append(event.n)
            assert d.handlers_for(Tick) == ()
            d.dispatch(Tick(n=event.n + 1))

        d.register_handler(Tick, once, once=True)
        d.dispatch(Tick(n=1))
        assert calls == [1], nested


def test_once_under_threads_runs_exactly_once(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    calls: list[int] = []
    d.register_handler(Tick, lambda e: calls.append(e.n), once=True)
    threads = [threading.Thread(target=d.dispatch, args=(Tick(n=i),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_weak_function_disappears_when_collected(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[int] = []

    def handler(event: Tick) -> None:
        seen.append(event.n)

    d.register_handler(Tick, handler, weak=True)
    assert d.handlers_for(Tick) == (handler,)
    d.dispatch(Tick(n=1))
    del handler
    gc.collect()
    assert d.handlers_for(Tick) == ()
    assert d.dispatch(Tick(n=2)) == 0
    assert seen == [1]


def test_weak_bound_method_uses_weakmethod(make_dispatcher: Any) -> None:
    class Listener:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_tick(self, event: Tick) -> None:
            self.seen.append(event.n)

    d = make_dispatcher()
    listener = Listener()
    d.register_handler(Tick, listener.on_tick, weak=True)
    assert d.dispatch(Tick(n=1)) == 1  # a plain weakref to the bound method would be dead
    assert listener.seen == [1]
    assert d.unregister_handler(Tick, listener.on_tick) is True
    d.register_handler(Tick, listener.on_tick, weak=True)
    del listener
    gc.collect()
    assert d.dispatch(Tick(n=2)) == 0


def test_strong_registration_keeps_the_handler_alive(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[int] = []

    def handler(event: Tick) -> None:
        seen.append(event.n)

    d.register_handler(Tick, handler)
    del handler
    gc.collect()
    assert d.dispatch(Tick(n=1)) == 1


def test_weak_needs_a_weakly_referenceable_handler(make_dispatcher: Any) -> None:
    class NoWeakrefs:
        __slots__ = ()

        def __call__(self, event: Tick) -> None:
            pass

    d = make_dispatcher()
    with pytest.raises(TypeError, match="weak reference"):
        d.register_handler(Tick, NoWeakrefs(), weak=True)
    assert d.handlers_for(Tick) == ()

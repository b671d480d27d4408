"""Rules 1-3: MRO routing, priority order, duplicates, the resolution cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domainbus import DomainEvent


class Base(DomainEvent):
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Other(DomainEvent):
    pass


def recorder(log: list[tuple[str, Any]], name: str) -> Callable[[Any], None]:
    def handler(event: Any) -> None:
        log.append((name, type(event).__name__))

    handler.__qualname__ = name
    return handler


def test_handler_sees_its_class_and_every_subclass(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[tuple[str, Any]] = []
    d.register_handler(Child, recorder(log, "child"))
    assert d.dispatch(Base()) == 0
    assert d.dispatch(Child()) == 1
    assert d.dispatch(GrandChild()) == 1
    assert d.dispatch(Other()) == 0
    assert log == [("child", "Child"), ("child", "GrandChild")]


def test_domain_event_handler_sees_everything(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(DomainEvent, seen.append)
    events = [Base(), Child(), Other()]
    assert d.dispatch_batch(events) == 3
    assert seen == events


def test_any_object_can_be_dispatched(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(int, seen.append)
    d.register_handler(object, seen.append)
    assert d.dispatch(True) == 2  # bool -> int -> object
    assert d.dispatch("text") == 1
    assert seen == [True, True, "text"]


def test_priority_then_registration_order_across_classes(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[tuple[str, Any]] = []
    d.register_handler(GrandChild, recorder(log, "gc-0"))
    d.register_handler(Base, recorder(log, "base-5"), priority=5)
    d.register_handler(Child, recorder(log, "child-0"))
    d.register_handler(Base, recorder(log, "base-0"))
    d.register_handler(Child, recorder(log, "child-neg"), priority=-1)
    d.register_handler(Child, recorder(log, "child-5"), priority=5)
    d.dispatch(GrandChild())
    assert [name for name, _ in log] == [
        "base-5",
        "child-5",
        "gc-0",
        "child-0",
        "base-0",
        "child-neg",
    ]
    names = [h.__qualname__ for h in d.handlers_for(GrandChild)]
    assert names == [name for name, _ in log]


def test_duplicate_registration_is_a_noop(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    assert d.register_handler(Base, seen.append) is not None
    d.register_handler(Base, seen.append, priority=10)
    assert d.handlers_for(Base) == (seen.append,)
    assert d.dispatch(Base()) == 1


def test_same_handler_on_two_classes_is_two_registrations(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Base, seen.append)
    d.register_handler(Child, seen.append)
    assert d.dispatch(Child()) == 2
    assert d.dispatch(Base()) == 1


def test_bound_methods_compare_equal_for_duplicates_and_unregister(make_dispatcher: Any) -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def on(self, event: Any) -> None:
            self.n += 1

    d = make_dispatcher()
    c = Counter()
    d.register_handler(Base, c.on)
    d.register_handler(Base, c.on)  # a new bound-method object, equal to the first
    d.dispatch(Base())
    assert c.n == 1
    assert d.unregister_handler(Base, c.on) is True
    assert d.dispatch(Base()) == 0


def test_register_returns_the_handler_and_decorator_registers(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []

    @d.handler(Child, priority=1)
    def on_child(event: Any) -> None:
        seen.append(("decorated", event))

    assert on_child.__name__ == "on_child"
    assert d.register_handler(Child, seen.append) == seen.append
    event = Child()
    assert d.dispatch(event) == 2
    assert seen == [("decorated", event), event]


def test_unregister_only_touches_the_exact_class(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Base, seen.append)
    assert d.unregister_handler(Child, seen.append) is False
    assert d.unregister_handler(Base, print) is False
    assert d.unregister_handler(Base, seen.append) is True
    assert d.unregister_handler(Base, seen.append) is False
    assert d.handlers_for(Child) == ()


def test_cache_is_invalidated_by_every_change(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[str] = []
    d.dispatch(GrandChild())  # warm the cache with an empty list
    d.register_handler(Base, lambda e: seen.append("base"))
    d.dispatch(GrandChild())
    d.register_handler(GrandChild, lambda e: seen.append("gc"))
    d.dispatch(GrandChild())
    d.clear()
    assert d.dispatch(GrandChild()) == 0
    assert seen == ["base", "base", "gc"]


def test_clear_removes_everything(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_handler(Base, print)
    d.register_handler(Other, print)
    d.clear()
    assert d.handlers_for(Base) == () and d.handlers_for(Other) == ()


def test_batch_accepts_any_iterable_and_counts_calls(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Base, seen.append)
    d.register_handler(Child, seen.append)
    events = [Base(), Child(), Other()]
    assert d.dispatch_batch(iter(events)) == 3
    assert d.dispatch_batch(e for e in events) == 3
    assert d.dispatch_batch(()) == 0
    assert d.dispatch_batch(tuple(events)) == 3


def test_many_types_past_the_cache_limit(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Base, seen.append)
    classes = [type(f"Dyn{i}", (Base,), {}) for i in range(5000)]
    assert d.dispatch_batch(cls() for cls in classes) == 5000
    assert d.dispatch(classes[0]()) == 1


def test_batch_list_grown_by_a_handler_is_dispatched_to_the_end(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    batch: list[Any] = [Base()]
    seen: list[Any] = []

    def grow(event: Any) -> None:
        seen.append(event)
        if len(batch) < 3:
            batch.append(Child())

    d.register_handler(Base, grow)
    assert d.dispatch_batch(batch) == 3  # like Python's list iterator, it sees the appends
    assert seen == batch


def test_batch_list_shrunk_by_a_handler_stops_early(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    batch: list[Any] = [Base(), Base(), Base()]
    d.register_handler(Base, lambda e: batch.clear())
    assert d.dispatch_batch(batch) == 1

"""Rule 4: a registry change during dispatch takes effect from the next event on."""

from __future__ import annotations

from typing import Any

from domainbus import DomainEvent


class Ping(DomainEvent):
    n: int = 0


def test_handler_registered_during_dispatch_runs_from_next_event(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []

    def late(event: Ping) -> None:
        log.append(f"late{event.n}")

    def first(event: Ping) -> None:
        log.append(f"first{event.n}")
        d.register_handler(Ping, late)

    d.register_handler(Ping, first)
    assert d.dispatch_batch([Ping(n=1), Ping(n=2)]) == 3
    assert log == ["first1", "first2", "late2"]


def test_handler_unregistered_during_dispatch_still_sees_the_event_in_flight(
    make_dispatcher: Any,
) -> None:
    d = make_dispatcher()
    log: list[str] = []

    def second(event: Ping) -> None:
        log.append(f"second{event.n}")

    def first(event: Ping) -> None:
        log.append(f"first{event.n}")
        d.unregister_handler(Ping, second)

    d.register_handler(Ping, first)
    d.register_handler(Ping, second)
    assert d.dispatch_batch([Ping(n=1), Ping(n=2)]) == 3
    assert log == ["first1", "second1", "first2"]


def test_clear_inside_a_batch_stops_later_events(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[int] = []

    def clearing(event: Ping) -> None:
        log.append(event.n)
        d.clear()

    d.register_handler(Ping, clearing)
    assert d.dispatch_batch([Ping(n=1), Ping(n=2)]) == 1
    assert log == [1]


def test_batch_generator_registering_between_events(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[int] = []

    def events() -> Any:
        yield Ping(n=1)
        d.register_handler(Ping, lambda e: seen.append(e.n))
        yield Ping(n=2)

    assert d.dispatch_batch(events()) == 1
    assert seen == [2]

"""Rule 5: nested dispatch, "immediate" (depth-first) and "queue" (breadth-first FIFO)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from domainbus import DomainEvent


class Outer(DomainEvent):
    n: int = 0


class Inner(DomainEvent):
    n: int = 0


def wire(d: Any, log: list[str]) -> None:
    def on_outer(event: Outer) -> None:
        log.append(f"outer{event.n}-a")
        log.append(f"inner-returned-{d.dispatch(Inner(n=event.n))}")
        log.append(f"outer{event.n}-b")

    def on_outer_late(event: Outer) -> None:
        log.append(f"outer{event.n}-late")

    d.register_handler(Outer, on_outer)
    d.register_handler(Outer, on_outer_late)
    d.register_handler(Inner, lambda e: log.append(f"inner{e.n}"))


def test_immediate_is_depth_first(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []
    wire(d, log)
    assert d.dispatch(Outer(n=1)) == 2
    assert log == ["outer1-a", "inner1", "inner-returned-1", "outer1-b", "outer1-late"]


def test_queue_is_breadth_first_and_counts_everything(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[str] = []
    wire(d, log)
    assert d.nested == "queue"
    assert d.dispatch(Outer(n=1)) == 3
    assert log == ["outer1-a", "inner-returned-0", "outer1-b", "outer1-late", "inner1"]


def test_queue_mode_in_a_batch_drains_after_each_event(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[str] = []
    wire(d, log)
    assert d.dispatch_batch([Outer(n=1), Outer(n=2)]) == 6
    assert log == [
        "outer1-a", "inner-returned-0", "outer1-b", "outer1-late", "inner1",
        "outer2-a", "inner-returned-0", "outer2-b", "outer2-late", "inner2",
    ]  # fmt: skip


def test_queue_mode_nested_batch_is_queued_in_order(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[int] = []
    d.register_handler(Outer, lambda e: d.dispatch_batch(Inner(n=i) for i in range(3)))
    d.register_handler(Inner, lambda e: log.append(e.n))
    assert d.dispatch(Outer()) == 4
    assert log == [0, 1, 2]


def test_queue_mode_chain_of_events(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[int] = []

    def step(event: Inner) -> None:
        log.append(event.n)
        if event.n < 50:
            d.dispatch(Inner(n=event.n + 1))

    d.register_handler(Inner, step)
    assert d.dispatch(Inner(n=0)) == 51  # no recursion: each event waits its turn
    assert log == list(range(51))


def test_immediate_runaway_recursion_is_a_recursion_error(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_handler(Inner, lambda e: d.dispatch(e))
    with pytest.raises(RecursionError):
        d.dispatch(Inner())
    # the dispatcher still works afterwards
    d.clear()
    d.register_handler(Inner, lambda e: None)
    assert d.dispatch(Inner()) == 1


def test_queue_error_reports_undispatched_queued_events(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")

    def fan_out(event: Outer) -> None:
        d.dispatch(Inner(n=1))
        d.dispatch(Inner(n=2))
        raise ValueError("boom")

    d.register_handler(Outer, fan_out)
    with pytest.raises(ValueError) as info:
        d.dispatch(Outer())
    assert "domainbus: 2 queued event(s) were not dispatched" in info.value.__notes__
    # the FIFO was discarded with the failed call: the next call starts clean
    d.clear()
    seen: list[Any] = []
    d.register_handler(Inner, seen.append)
    assert d.dispatch(Inner(n=3)) == 1 and [e.n for e in seen] == [3]


def test_queue_mode_fifo_is_per_thread(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    barrier = threading.Barrier(2)
    results: dict[str, list[int]] = {"a": [], "b": []}

    def on_outer(event: Outer) -> None:
        barrier.wait(timeout=5)
        d.dispatch(Inner(n=event.n))

    d.register_handler(Outer, on_outer)
    d.register_handler(Inner, lambda e: results["a" if e.n == 1 else "b"].append(e.n))
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda n=n: counts.append(d.dispatch(Outer(n=n)))) for n in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == [2, 2]
    assert results == {"a": [1], "b": [2]}

"""Parity of the two BatchQueues: random programs, the same observable behaviour.

A Hypothesis state machine puts (one by one and in runs, blocking or not, into a small queue),
drains in the calling thread (all or a few), stops (with or without draining) and reopens, on a
pure and a Rust queue side by side, each feeding its own backend's dispatcher built with the same
random error policy; some events make their handler raise (an `on_error` callback also checks
that it gets the exception being handled, with its traceback). After every step the handler call
logs, return values, exceptions (type, message, notes, `accepted`) and the counters must match.
Only the calling thread consumes here, so every step is deterministic; the background consumer
is covered by tests/test_queue.py.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domainbus import pure, rust


class Boom(Exception):
    pass


class Side:
    """A dispatcher of one backend, its queue, and the log of its handler calls."""

    def __init__(self, module: Any, on_error: str, capacity: int, batch_size: int) -> None:
        self.module = module
        self.log: list[tuple[Any, ...]] = []
        policy: Any = self.report if on_error == "callback" else on_error
        self.dispatcher = module.Dispatcher(on_error=policy)
        self.dispatcher.register_handler(int, self.handle)
        self.capacity, self.batch_size = capacity, batch_size
        self.queue = module.BatchQueue(self.dispatcher, capacity=capacity, batch_size=batch_size)

    def handle(self, event: int) -> None:
        self.log.append(("handled", event))
        if event % 7 == 3:
            raise Boom(f"event {event}")

    def report(self, exc: Exception, event: Any, handler: Any) -> None:
        # the exception is the one being handled, with its traceback (issue 10, item 7)
        handled = sys.exc_info()[1] is exc and exc.__traceback__ is not None
        self.log.append(("reported", str(exc), event, handled))

    def reopen(self) -> None:
        self.queue = self.module.BatchQueue(
            self.dispatcher, capacity=self.capacity, batch_size=self.batch_size
        )


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", call())
    except BaseException as exc:  # every exception is part of the comparison
        members = tuple(outcome_of(e) for e in getattr(exc, "exceptions", ()))
        return (
            "raised",
            type(exc).__name__,
            str(exc),
            tuple(getattr(exc, "__notes__", ())),
            getattr(exc, "accepted", None),
            members,
        )


def outcome_of(exc: BaseException) -> tuple[Any, ...]:
    return (type(exc).__name__, str(exc), tuple(getattr(exc, "__notes__", ())))


class QueueParity(RuleBasedStateMachine):
    sides: tuple[Side, Side]

    @initialize(
        on_error=st.sampled_from(["raise", "collect", "callback"]),
        capacity=st.integers(1, 8),
        batch_size=st.integers(1, 4),
    )
    def build(self, on_error: str, capacity: int, batch_size: int) -> None:
        self.sides = (
            Side(pure, on_error, capacity, batch_size),
            Side(rust, on_error, capacity, batch_size),
        )

    def both(self, action: Callable[[Side], Any]) -> None:
        results = [outcome(lambda s=s: action(s)) for s in self.sides]
        assert results[0] == results[1]
        assert self.sides[0].log == self.sides[1].log

    @rule(event=st.integers(0, 30))
    def put_nowait(self, event: int) -> None:
        self.both(lambda s: s.queue.put(event, block=False))

    @rule(events=st.lists(st.integers(0, 30), max_size=6))
    def put_many_nowait(self, events: list[int]) -> None:
        self.both(lambda s: s.queue.put_many(list(events), block=False))

    @rule(events=st.lists(st.integers(0, 30), max_size=6))
    def put_many_from_a_generator(self, events: list[int]) -> None:
        self.both(lambda s: s.queue.put_many((e for e in events), block=False))

    @rule(max_events=st.none() | st.integers(0, 5))
    def drain(self, max_events: int | None) -> None:
        self.both(lambda s: s.queue.drain(max_events))

    @rule(drain=st.booleans())
    def stop(self, drain: bool) -> None:
        self.both(lambda s: s.queue.stop(drain=drain))

    @rule()
    def reopen(self) -> None:
        """A new queue on the same dispatcher; what the old one still holds is drained first."""
        self.both(lambda s: s.queue.drain())
        for side in self.sides:
            side.reopen()

    @invariant()
    def same_state(self) -> None:
        states = [
            (len(s.queue), s.queue.closed, s.queue.put_count, s.queue.dispatched_count)
            for s in self.sides
        ]
        assert states[0] == states[1]

    def teardown(self) -> None:
        for side in self.sides:  # leave nothing behind for the exit-time warning
            try:
                side.queue.drain()
            except Exception:
                pass
            side.queue.stop(drain=False)
            while len(side.queue):
                try:
                    side.queue.drain()
                except Exception:
                    continue


QueueParity.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueParity = QueueParity.TestCase


def test_full_is_the_stdlib_exception() -> None:
    for module in (pure, rust):
        q = module.BatchQueue(module.Dispatcher(), capacity=1)
        q.put(1)
        try:
            q.put(2, block=False)
        except queue.Full:
            pass
        else:  # pragma: no cover - reported by the assertion
            raise AssertionError(f"{module.__name__}: a full queue accepted an event")
        q.drain()

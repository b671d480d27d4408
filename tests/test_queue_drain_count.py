"""`BatchQueue.drain()` returns handler calls, not events (as `dispatch_batch` does), on both
backends; `max_events` and `dispatched_count` count events."""

from __future__ import annotations

from types import ModuleType


class Two:
    pass


class Nobody:
    pass


def test_drain_counts_handler_calls_and_max_events_counts_events(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    calls: list[str] = []
    dispatcher.register_handler(Two, lambda e: calls.append("first"))
    dispatcher.register_handler(Two, lambda e: calls.append("second"))
    q = backend.BatchQueue(dispatcher, capacity=16, batch_size=4)
    q.put_many([Two(), Nobody(), Two(), Two(), Nobody()])
    assert q.drain(max_events=3) == 4  # events Two, Nobody, Two: 2 + 0 + 2 handler calls
    assert (q.dispatched_count, len(q)) == (3, 2)
    assert q.drain() == 2  # Two, Nobody
    assert (q.dispatched_count, len(q), len(calls)) == (5, 0, 6)
    assert dispatcher.dispatch_batch([Two(), Nobody()]) == 2  # the same count

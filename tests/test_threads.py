"""Rule 11: registering, unregistering and dispatching from many threads at once is safe."""

from __future__ import annotations

import threading
from typing import Any

from domainbus import DomainEvent


class Beat(DomainEvent):
    n: int = 0


def test_concurrent_register_dispatch_unregister(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    counts = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def count(event: Beat) -> None:
        with lock:
            counts[0] += 1

    d.register_handler(Beat, count)

    def churn(k: int) -> None:
        try:
            handlers = [lambda e, i=i: None for i in range(20)]
            while not stop.is_set():
                for h in handlers:
                    d.register_handler(Beat, h, priority=k)
                for h in handlers:
                    assert d.unregister_handler(Beat, h) is True
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def dispatch() -> None:
        try:
            for _ in range(300):
                d.dispatch_batch([Beat()] * 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    churners = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    dispatchers = [threading.Thread(target=dispatch) for _ in range(3)]
    for t in churners + dispatchers:
        t.start()
    for t in dispatchers:
        t.join()
    stop.set()
    for t in churners:
        t.join()
    assert errors == []
    assert counts[0] == 3 * 300 * 10  # the stable handler saw every event exactly once
    assert d.handlers_for(Beat) == (count,)


def test_concurrent_registrations_keep_unique_order(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    handlers = [[(lambda e, t=t, i=i: None) for i in range(200)] for t in range(4)]

    def register(batch: list[Any]) -> None:
        for h in batch:
            d.register_handler(Beat, h)

    threads = [threading.Thread(target=register, args=(b,)) for b in handlers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    resolved = d.handlers_for(Beat)
    assert sorted(map(id, resolved)) == sorted(id(h) for b in handlers for h in b)
    for batch in handlers:  # each thread's registrations keep their relative order
        positions = [resolved.index(h) for h in batch]
        assert positions == sorted(positions)

"""BatchQueue throughput (issue 3): 4 producer threads x 250,000 events into one consumer.

Group "queue", end to end: one no-op handler and a started consumer, timed from the first put
to the last event dispatched (producers and consumer share the GIL, so this is the sum of both
sides' costs):

- rust-put / rust-put_many: `domainbus.rust.BatchQueue`, `put` one by one, or `put_many` in
  batches of 1,000;
- pure-put / pure-put_many: the same with `domainbus.pure.BatchQueue`;
- stdlib-put: the usual hand-written `queue.Queue` (the same capacity, 65,536) plus a worker
  thread calling the article's dispatcher (a dict of lists keyed by exact type) per event,
  with `task_done()` and `Queue.join()`.

Group "queue-producers", the producers' side alone: the same 4 x 250,000 puts into a queue
big enough for all of them, with no consumer (the stdlib queue unbounded).

Every run checks its counts (each event dispatched, or queued, exactly once). Targets:
stdlib-put / rust-put >= 10 (end to end); rust put / put_many >= 3 (producers' side; end to
end the dispatch cost, the same for both, bounds that ratio near 1.5). Run:
`pytest benches/test_queue.py --benchmark-group-by=group` (`--bench-events N` sets the total;
2,000 under `--benchmark-disable`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import pytest

from domainbus import pure, rust
from domainbus.bench.events import FLAT_TYPES
from domainbus.bench.systems import EventDispatcher

PRODUCERS = 4
DEFAULT_TOTAL = PRODUCERS * 250_000
CHUNK = 1_000  # put_many batch size
CAPACITY = 65_536
ROUNDS = 3
EventType = FLAT_TYPES[0]


@pytest.fixture(scope="module")
def per_producer(request: pytest.FixtureRequest, bench_events: int) -> int:
    """Events each producer puts: 250,000 unless --bench-events (the total) or a quick run."""
    explicit = request.config.getoption("--bench-events") is not None
    disabled = request.config.getoption("benchmark_disable", default=False)
    total = bench_events if explicit or disabled else DEFAULT_TOTAL
    return max(1, total // PRODUCERS)


@pytest.fixture(scope="module")
def events(per_producer: int) -> list[Any]:
    """The events every producer puts (the same objects: building them is not measured)."""
    return [EventType(user_id=f"user-{i % 97}", sequence=i) for i in range(per_producer)]


def produce(events: list[Any], put: Callable[[Any], object], put_many: bool) -> None:
    if put_many:
        for start in range(0, len(events), CHUNK):
            put(events[start : start + CHUNK])
    else:
        for event in events:
            put(event)


def in_producers(events: list[Any], put: Callable[[Any], object], put_many: bool) -> None:
    threads = [
        threading.Thread(target=produce, args=(events, put, put_many)) for _ in range(PRODUCERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def noop(event: Any) -> None:
    pass


def batch_queue_run(backend: ModuleType, events: list[Any], put_many: bool) -> int:
    """Returns the events the consumer dispatched."""
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(EventType, noop)
    q = backend.BatchQueue(dispatcher, capacity=CAPACITY)
    q.start()
    in_producers(events, q.put_many if put_many else q.put, put_many)
    assert q.join()
    assert q.stop()
    assert len(q) == 0
    dispatched: int = q.dispatched_count
    return dispatched


def stdlib_run(events: list[Any]) -> int:
    """Returns the events the worker dispatched."""
    dispatcher = EventDispatcher()
    dispatcher.register_handler(EventType, noop)
    q: queue.Queue[Any] = queue.Queue(maxsize=CAPACITY)
    stop = object()
    dispatched = [0]

    def worker() -> None:
        get, dispatch, done = q.get, dispatcher.dispatch, q.task_done
        count = 0
        while (event := get()) is not stop:
            dispatch(event)
            done()
            count += 1
        dispatched[0] = count

    consumer = threading.Thread(target=worker, daemon=True)
    consumer.start()
    in_producers(events, q.put, put_many=False)
    q.join()
    q.put(stop)
    consumer.join()
    return dispatched[0]


class Fill:
    """A producers-only run: a fresh queue per round (set up and emptied outside the timing)."""

    def __init__(self, make: Callable[[int], Any], put_many: bool = False) -> None:
        self.make, self.put_many = make, put_many

    def setup(self, events: list[Any]) -> tuple[tuple[Any, list[Any]], dict[str, Any]]:
        return (self.make(PRODUCERS * len(events)), events), {}

    def run(self, q: Any, events: list[Any]) -> int:
        in_producers(events, q.put_many if self.put_many else q.put, self.put_many)
        return q.qsize() if isinstance(q, queue.Queue) else len(q)

    @staticmethod
    def teardown(q: Any, events: list[Any]) -> None:
        if not isinstance(q, queue.Queue):
            q.stop(drain=False)
            q.drain()


def batch_queue(backend: ModuleType) -> Callable[[int], Any]:
    return lambda capacity: backend.BatchQueue(backend.Dispatcher(), capacity=capacity)


SYSTEMS: dict[str, Callable[[list[Any]], int]] = {
    "rust-put": lambda events: batch_queue_run(rust, events, put_many=False),
    "rust-put_many": lambda events: batch_queue_run(rust, events, put_many=True),
    "pure-put": lambda events: batch_queue_run(pure, events, put_many=False),
    "pure-put_many": lambda events: batch_queue_run(pure, events, put_many=True),
    "stdlib-put": stdlib_run,
}
PRODUCERS_ONLY: dict[str, Fill] = {
    "rust-put": Fill(batch_queue(rust)),
    "rust-put_many": Fill(batch_queue(rust), put_many=True),
    "pure-put": Fill(batch_queue(pure)),
    "pure-put_many": Fill(batch_queue(pure), put_many=True),
    "stdlib-put": Fill(lambda capacity: queue.Queue()),
}
RATIOS: Sequence[tuple[str, str, str, float]] = (
    ("stdlib-put / rust-put", "queue:stdlib-put", "queue:rust-put", 10.0),
    ("rust-put / rust-put_many", "queue:rust-put", "queue:rust-put_many", 0.0),
    ("pure-put / rust-put", "queue:pure-put", "queue:rust-put", 0.0),
    ("stdlib-put / pure-put", "queue:stdlib-put", "queue:pure-put", 0.0),
    ("pure-put / pure-put_many", "queue:pure-put", "queue:pure-put_many", 0.0),
    ("producers: rust put / put_many", "producers:rust-put", "producers:rust-put_many", 3.0),
    ("producers: stdlib put / rust put", "producers:stdlib-put", "producers:rust-put", 0.0),
    ("producers: pure put / put_many", "producers:pure-put", "producers:pure-put_many", 0.0),
)


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request: pytest.FixtureRequest, ledger: Any) -> Iterator[None]:
    """After the module: the ratios of the medians of this run, against the targets."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for label, top, bottom, target in RATIOS:
            a, b = ledger.medians.get(top), ledger.medians.get(bottom)
            if a is None or b is None:
                continue
            goal = f" (target >= {target:g})" if target else ""
            reporter.write_line(f"queue {label}: {a / b:.2f}{goal}")
        for key, median in ledger.medians.items():
            if key.startswith(("queue:", "producers:")):
                reporter.write_line(f"{key}: {1 / median:,.0f} events/s")


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_queue_throughput(
    benchmark: Any, ledger: Any, events: list[Any], per_producer: int, system: str
) -> None:
    benchmark.group = "queue"
    benchmark.extra_info["events"] = PRODUCERS * per_producer
    dispatched = benchmark.pedantic(SYSTEMS[system], args=(events,), rounds=ROUNDS, iterations=1)
    assert dispatched == PRODUCERS * per_producer
    ledger.record(f"queue:{system}", benchmark, units=PRODUCERS * per_producer)


@pytest.mark.parametrize("system", list(PRODUCERS_ONLY))
def test_producer_side(
    benchmark: Any, ledger: Any, events: list[Any], per_producer: int, system: str
) -> None:
    benchmark.group = "queue-producers"
    benchmark.extra_info["events"] = PRODUCERS * per_producer
    fill = PRODUCERS_ONLY[system]
    queued = benchmark.pedantic(
        fill.run, setup=lambda: fill.setup(events), teardown=fill.teardown, rounds=ROUNDS
    )
    assert queued == PRODUCERS * per_producer
    ledger.record(f"producers:{system}", benchmark, units=PRODUCERS * per_producer)

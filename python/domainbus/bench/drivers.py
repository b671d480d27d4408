"""Drivers: how a workload's events reach a wired `Bus`, as one zero-argument callable per run.

`drive(mode, ...)` is a context manager around the callable, so set-up that must not be timed
(encoding the msgpack buffers, starting a queue's consumer, creating an event loop) happens
once, and tear-down happens even when a run fails. Modes whose domainbus API has not landed
report it through `unavailable(mode)`; buses that lack the capability raise NotApplicable.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from domainbus.bench.systems import Bus, NotApplicable

__all__ = ["DECODE_CHUNK", "PRODUCERS", "Run", "drive", "unavailable"]

Run = Callable[[], object]
DECODE_CHUNK = 1_000  # events per msgpack buffer in the decode workload
PRODUCERS = 4  # producer threads in the queue workload
QUEUE_CAPACITY = 8_192
QUEUE_BATCH = 256

# the domainbus API each mode drives ("module:attribute.path"), any one of which will do
_NEEDS: dict[str, tuple[str, ...]] = {
    "batch": (),
    "single": (),
    "queue": ("domainbus.rust:BatchQueue", "domainbus.pure:BatchQueue"),
    "async": (
        "domainbus.rust:Dispatcher.dispatch_batch_async",
        "domainbus.pure:Dispatcher.dispatch_batch_async",
    ),
    "decode": ("domainbus.codec:EventCodec",),
}


def _importable(spec: str) -> bool:
    module, _, path = spec.partition(":")
    try:
        value: Any = importlib.import_module(module)
        for name in path.split("."):
            value = getattr(value, name)
    except (ImportError, AttributeError):
        return False
    return True


def unavailable(mode: str) -> str | None:
    """Why the API behind `mode` cannot be used here (not written yet), or None."""
    if mode not in _NEEDS:
        raise ValueError(f"unknown workload mode {mode!r}; known: {', '.join(_NEEDS)}")
    needs = _NEEDS[mode]
    if not needs or any(_importable(spec) for spec in needs):
        return None
    names = " or ".join(spec.replace(":", ".") for spec in needs)
    return f"{names} is not available in this domainbus build"


@contextlib.contextmanager
def drive(mode: str, bus: Bus, events: Sequence[Any], event_types: Sequence[type]) -> Iterator[Run]:
    """A callable that publishes all of `events` to `bus` the way `mode` says."""
    if mode == "batch":
        yield lambda: bus.publish_many(events)
    elif mode == "single":
        yield _single(bus.publish, events)
    elif mode == "decode":
        yield _decode(bus.publish_many, events, event_types)
    elif mode == "async":
        with _async(bus, events) as run:
            yield run
    elif mode == "queue":
        with _queue(bus, events) as run:
            yield run
    else:
        raise ValueError(f"unknown workload mode {mode!r}")


def _single(publish: Callable[[Any], object], events: Sequence[Any]) -> Run:
    def run() -> None:
        for event in events:
            publish(event)

    return run


def _decode(
    publish_many: Callable[[Sequence[Any]], object],
    events: Sequence[Any],
    event_types: Sequence[type],
) -> Run:
    from domainbus.codec import EventCodec

    codec = EventCodec(*event_types)
    buffers = [
        codec.encode_batch(events[start : start + DECODE_CHUNK])
        for start in range(0, len(events), DECODE_CHUNK)
    ]
    decode_batch = codec.decode_batch

    def run() -> None:
        for buffer in buffers:
            publish_many(decode_batch(buffer))

    return run


@contextlib.contextmanager
def _async(bus: Bus, events: Sequence[Any]) -> Iterator[Run]:
    publish_many_async = bus.publish_many_async
    if publish_many_async is None:
        raise NotApplicable("has no async dispatch")
    loop = asyncio.new_event_loop()
    try:
        yield lambda: loop.run_until_complete(publish_many_async(events))
    finally:
        loop.close()


@contextlib.contextmanager
def _queue(bus: Bus, events: Sequence[Any]) -> Iterator[Run]:
    """`PRODUCERS` threads put a share of the events each; the run ends when all are handled.

    domainbus backends use their own `BatchQueue`; the other systems get what their users would
    write otherwise: a `queue.SimpleQueue` and a consumer thread calling the system per event.
    """
    chunks = [events[i::PRODUCERS] for i in range(PRODUCERS)]
    batch_queue = getattr(bus.backend, "BatchQueue", None)
    if bus.backend is not None and batch_queue is None:
        raise NotApplicable(f"{bus.backend.__name__} has no BatchQueue")
    if batch_queue is None:
        yield lambda: _through_simple_queue(bus.publish, chunks)
        return
    batcher = batch_queue(bus.dispatcher, capacity=QUEUE_CAPACITY, batch_size=QUEUE_BATCH)
    batcher.start()

    def run() -> None:
        _in_threads(batcher.put_many, chunks)
        batcher.join()

    try:
        yield run
    finally:
        batcher.stop()


def _in_threads(target: Callable[[Sequence[Any]], object], chunks: Sequence[Sequence[Any]]) -> None:
    """`target(chunk)` for every chunk, each in its own thread, all at once; waits for all."""
    threads = [threading.Thread(target=target, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


_END = object()


def _through_simple_queue(
    publish: Callable[[Any], object], chunks: Sequence[Sequence[Any]]
) -> None:
    handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()
    failures: list[BaseException] = []

    def consume() -> None:
        get = handoff.get
        try:
            while (event := get()) is not _END:
                publish(event)
        except BaseException as exc:  # handed to the caller below, not lost in the thread
            failures.append(exc)

    def produce(chunk: Sequence[Any]) -> None:
        put = handoff.put
        for event in chunk:
            put(event)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        _in_threads(produce, chunks)
    finally:
        handoff.put(_END)
        consumer.join()
    if failures:
        raise failures[0]

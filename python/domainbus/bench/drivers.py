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

# the domainbus API each mode drives: (module, attribute path), None for the core dispatcher
_NEEDS: dict[str, tuple[str, str] | None] = {
    "batch": None,
    "single": None,
    "queue": ("domainbus", "BatchQueue"),
    "async": ("domainbus.pure", "Dispatcher.dispatch_batch_async"),
    "decode": ("domainbus.codec", "EventCodec"),
}


def _lookup(module: str, path: str) -> Any:
    value: Any = importlib.import_module(module)
    for name in path.split("."):
        value = getattr(value, name)
    return value


def unavailable(mode: str) -> str | None:
    """Why the API behind `mode` cannot be used here (not written yet), or None."""
    if mode not in _NEEDS:
        raise ValueError(f"unknown workload mode {mode!r}; known: {', '.join(_NEEDS)}")
    need = _NEEDS[mode]
    if need is None:
        return None
    module, path = need
    try:
        _lookup(module, path)
    except (ImportError, AttributeError):
        return f"{module}.{path} is not available in this domainbus build"
    return None


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
    if bus.dispatcher is None:
        raise NotApplicable("has no queue")
    from domainbus import BatchQueue  # type: ignore[attr-defined]

    queue = BatchQueue(bus.dispatcher, capacity=QUEUE_CAPACITY, batch_size=QUEUE_BATCH)
    chunks = [events[i::PRODUCERS] for i in range(PRODUCERS)]
    queue.start()

    def run() -> None:
        producers = [threading.Thread(target=queue.put_many, args=(chunk,)) for chunk in chunks]
        for producer in producers:
            producer.start()
        for producer in producers:
            producer.join()
        queue.join()

    try:
        yield run
    finally:
        queue.stop()

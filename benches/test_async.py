"""Issue 4's benchmark: `dispatch_batch_async` with one async no-op handler per event class.

Side by side in one run: the Rust backend, the pure backend, the same loop written by hand
(`for e in events: await handler(e)`, the floor), and, when installed, pyee's
AsyncIOEventEmitter and blinker's `send_async`. Each variant is checked to make one handler
call per event before it is timed. Target: Rust within 1.3x of the hand-written loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from domainbus import DomainEvent, pure, rust


class Tick(DomainEvent):
    n: int = 0


def make_events(count: int) -> list[Tick]:
    return [Tick(n=i) for i in range(count)]


def counting_handler() -> tuple[Callable[[Any], Awaitable[None]], list[int]]:
    calls = [0]

    async def handler(event: Any) -> None:
        calls[0] += 1

    return handler, calls


def domainbus_variant(module: Any) -> Callable[[list[Any]], Any]:
    def build(events: list[Any]) -> Any:
        handler, calls = counting_handler()
        d = module.Dispatcher()
        d.register_handler(Tick, handler)
        return (lambda: d.dispatch_batch_async(events)), calls

    return build


def hand_loop(events: list[Any]) -> Any:
    handler, calls = counting_handler()

    async def run() -> None:
        for event in events:
            await handler(event)

    return run, calls


def pyee_variant(events: list[Any]) -> Any:
    pyee_asyncio = pytest.importorskip("pyee.asyncio")
    handler, calls = counting_handler()

    async def run() -> None:
        emitter = pyee_asyncio.AsyncIOEventEmitter()
        emitter.on("Tick", handler)
        for event in events:
            emitter.emit("Tick", event)  # schedules the coroutine as a task
        while calls[0] < len(events):  # fire-and-forget: wait until all of them ran
            await asyncio.sleep(0)

    return run, calls


def blinker_variant(events: list[Any]) -> Any:
    blinker = pytest.importorskip("blinker")
    calls = [0]

    async def receiver(sender: Any) -> None:
        calls[0] += 1

    signal = blinker.Signal()
    signal.connect(receiver)

    async def run() -> None:
        for event in events:
            await signal.send_async(event, _sync_wrapper=None)  # type: ignore[arg-type]

    return run, calls, receiver  # keep the weakly connected receiver alive


VARIANTS: dict[str, Callable[[list[Any]], Any]] = {
    "rust": domainbus_variant(rust),
    "pure": domainbus_variant(pure),
    "hand-loop": hand_loop,
    "pyee": pyee_variant,
    "blinker": blinker_variant,
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dispatch_batch_async(benchmark: Any, ledger: Any, bench_events: int, variant: str) -> None:
    count = min(bench_events, 100_000)
    events = make_events(count)
    run, calls, *_keep = VARIANTS[variant](events)
    asyncio.run(run())
    assert calls[0] == count, f"{variant} made {calls[0]} handler calls, expected {count}"
    benchmark.group = "async: dispatch_batch_async, 1 async handler"
    benchmark(lambda: asyncio.run(run()))
    ledger.record(f"async:{variant}", benchmark, count)

"""dispatch_async / dispatch_batch_async: the rules of dispatch, with handlers awaited."""

from __future__ import annotations

import asyncio
import gc
import types
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from domainbus import DomainEvent


class Signup(DomainEvent):
    n: int = 0


class Audit(DomainEvent):
    n: int = 0


class Boom(Exception):
    pass


def run(coro: Awaitable[Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" fails the test
        result = asyncio.run(coro)  # type: ignore[arg-type]
        gc.collect()
    return result


def test_sync_and_async_handlers_run_in_order(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []

    async def slow(event: Signup) -> None:
        log.append(f"slow-start{event.n}")
        await asyncio.sleep(0.001)
        log.append(f"slow-end{event.n}")

    d.register_handler(Signup, slow, priority=1)
    d.register_handler(Signup, lambda e: log.append(f"sync{e.n}"))
    assert run(d.dispatch_async(Signup(n=1))) == 2
    assert log == ["slow-start1", "slow-end1", "sync1"]
    log.clear()
    assert run(d.dispatch_batch_async([Signup(n=1), Signup(n=2)])) == 4
    assert log == ["slow-start1", "slow-end1", "sync1", "slow-start2", "slow-end2", "sync2"]


def test_any_awaitable_is_awaited(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[int] = []

    def returns_future(event: Signup) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(lambda: (log.append(event.n), future.set_result(None)))
        return future

    d.register_handler(Signup, returns_future)
    d.register_handler(Signup, lambda e: log.append(-e.n))
    assert run(d.dispatch_async(Signup(n=3))) == 2
    assert log == [3, -3]


def test_routing_once_weak_and_unhandled_match_sync(make_dispatcher: Any) -> None:
    missed: list[Any] = []
    d = make_dispatcher(on_unhandled=missed.append)
    seen: list[int] = []

    async def once(event: DomainEvent) -> None:
        seen.append(-1)

    d.register_handler(DomainEvent, once, once=True)
    d.register_handler(Signup, lambda e: seen.append(e.n))
    assert run(d.dispatch_batch_async([Signup(n=1), Signup(n=2), 7])) == 3
    assert seen == [-1, 1, 2]
    assert missed == [7]


def test_nested_immediate_and_queue(make_dispatcher: Any) -> None:
    for nested, expected, count in [
        ("immediate", ["signup-a", "audit", "signup-b"], 1),  # the inner call counts its own
        ("queue", ["signup-a", "signup-b", "audit"], 2),
    ]:
        d = make_dispatcher(nested=nested)
        log: list[str] = []

        async def on_signup(event: Signup, d: Any = d, log: list[str] = log) -> None:
            log.append("signup-a")
            await d.dispatch_async(Audit(n=event.n))
            log.append("signup-b")

        d.register_handler(Signup, on_signup)
        d.register_handler(Audit, lambda e, log=log: log.append("audit"))
        assert run(d.dispatch_async(Signup())) == count
        assert log == expected, nested


def test_queue_mode_fifo_is_per_task(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[tuple[str, int]] = []

    async def on_signup(event: Signup) -> None:
        await asyncio.sleep(0)
        await d.dispatch_async(Audit(n=event.n))
        log.append(("signup-done", event.n))

    d.register_handler(Signup, on_signup)
    d.register_handler(Audit, lambda e: log.append(("audit", e.n)))

    async def main() -> list[int]:
        return list(
            await asyncio.gather(d.dispatch_async(Signup(n=1)), d.dispatch_async(Signup(n=2)))
        )

    assert run(main()) == [2, 2]
    assert sorted(log) == [("audit", 1), ("audit", 2), ("signup-done", 1), ("signup-done", 2)]
    for n in (1, 2):  # within each task the audit runs after its signup handler finished
        assert log.index(("signup-done", n)) < log.index(("audit", n))


def test_errors_follow_the_policies(make_dispatcher: Any) -> None:
    async def failing(event: Signup) -> None:
        await asyncio.sleep(0)
        raise Boom(f"fail {event.n}")

    note = f"domainbus: raised by handler {__name__}.{failing.__qualname__} for Signup"

    d = make_dispatcher()
    after: list[int] = []
    d.register_handler(Signup, failing)
    d.register_handler(Signup, lambda e: after.append(e.n))
    with pytest.raises(Boom) as info:
        run(d.dispatch_batch_async([Signup(n=1), Signup(n=2)]))
    assert info.value.__notes__ == [f"{note} at batch index 0"] and after == []

    d = make_dispatcher(on_error="collect")
    d.register_handler(Signup, failing)
    with pytest.raises(ExceptionGroup) as group:
        run(d.dispatch_batch_async([Signup(n=1), Signup(n=2)]))
    assert [str(e) for e in group.value.exceptions] == ["fail 1", "fail 2"]

    reports: list[str] = []

    async def report(exc: Exception, event: Any, handler: Any) -> None:
        reports.append(str(exc))

    d = make_dispatcher(on_error=report)
    d.register_handler(Signup, failing)
    assert run(d.dispatch_async(Signup(n=5))) == 1
    assert reports == ["fail 5"]


def test_concurrent_runs_one_events_handlers_together(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []

    def make(name: str) -> Callable[[Signup], Awaitable[None]]:
        async def handler(event: Signup) -> None:
            log.append(f"{name}-start")
            await asyncio.sleep(0)
            log.append(f"{name}-end")

        return handler

    d.register_handler(Signup, make("a"))
    d.register_handler(Signup, make("b"))
    assert run(d.dispatch_async(Signup(), concurrent=True)) == 2
    assert log[:2] == ["a-start", "b-start"]  # b started before a finished
    log.clear()
    assert run(d.dispatch_async(Signup())) == 2
    assert log == ["a-start", "a-end", "b-start", "b-end"]


def test_concurrent_raise_cancels_siblings(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    cancelled: list[str] = []

    async def failing(event: Signup) -> None:
        await asyncio.sleep(0)
        raise Boom("first")

    async def slow(event: Signup) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    d.register_handler(Signup, slow)
    d.register_handler(Signup, failing)
    with pytest.raises(Boom, match="first"):
        run(d.dispatch_async(Signup(), concurrent=True))
    assert cancelled == ["slow"]


def test_concurrent_collect_and_callback_finish_everything(make_dispatcher: Any) -> None:
    async def failing(event: Signup) -> None:
        await asyncio.sleep(0)
        raise Boom(f"f{event.n}")

    def sync_failing(event: Signup) -> None:
        raise Boom(f"s{event.n}")

    finished: list[int] = []

    async def fine(event: Signup) -> None:
        await asyncio.sleep(0.001)
        finished.append(event.n)

    d = make_dispatcher(on_error="collect")
    for h in (failing, fine, sync_failing):
        d.register_handler(Signup, h)
    with pytest.raises(ExceptionGroup) as group:
        run(d.dispatch_async(Signup(n=1), concurrent=True))
    assert sorted(str(e) for e in group.value.exceptions) == ["f1", "s1"]
    assert finished == [1]

    reports: list[str] = []
    d = make_dispatcher(on_error=lambda exc, event, handler: reports.append(str(exc)))
    for h in (failing, fine, sync_failing):
        d.register_handler(Signup, h)
    assert run(d.dispatch_async(Signup(n=2), concurrent=True)) == 3
    assert sorted(reports) == ["f2", "s2"] and finished == [1, 2]


def test_concurrent_sync_failure_under_raise_leaves_no_unawaited_coroutine(
    make_dispatcher: Any,
) -> None:
    d = make_dispatcher()
    started: list[str] = []

    async def pending(event: Signup) -> None:
        started.append("pending")

    def sync_failing(event: Signup) -> None:
        raise Boom("sync")

    d.register_handler(Signup, pending)
    d.register_handler(Signup, sync_failing)
    with pytest.raises(Boom):
        run(d.dispatch_async(Signup(), concurrent=True))
    assert started == []  # closed before it ran, and no "never awaited" warning


def test_cancellation_stops_at_the_handler_boundary(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []

    async def slow(event: Signup) -> None:
        log.append("slow-start")
        await asyncio.sleep(10)
        log.append("slow-end")  # pragma: no cover - cancelled before

    d.register_handler(Signup, slow)
    d.register_handler(Signup, lambda e: log.append("after"))

    async def main() -> None:
        task = asyncio.create_task(d.dispatch_async(Signup()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert log == ["slow-start"]


def test_batch_async_needs_an_iterable(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    with pytest.raises(TypeError, match="dispatch_batch_async\\(\\) needs an iterable of events"):
        run(d.dispatch_batch_async(3))


def test_async_registry_changes_apply_from_next_event(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[str] = []

    async def first(event: Signup) -> None:
        seen.append(f"first{event.n}")
        d.register_handler(Signup, lambda e: seen.append(f"late{e.n}"))

    d.register_handler(Signup, first)
    assert run(d.dispatch_batch_async([Signup(n=1), Signup(n=2)])) == 3
    assert seen == ["first1", "first2", "late2"]


def test_the_returned_object_is_a_coroutine_for_asyncio(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[int] = []
    d.register_handler(Signup, lambda e: seen.append(e.n))

    async def main() -> int:
        pending = d.dispatch_async(Signup(n=1))
        assert asyncio.iscoroutine(pending)
        return await asyncio.create_task(pending)

    assert run(main()) == 1 and seen == [1]


def test_awaiting_twice_is_an_error(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    async def main() -> None:
        pending = d.dispatch_async(Signup())
        assert await pending == 0
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await pending

    run(main())


def test_a_forgotten_await_warns_like_a_coroutine(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Signup, seen.append)
    with pytest.warns(RuntimeWarning, match="coroutine 'dispatch_async' was never awaited"):
        d.dispatch_async(Signup())
        gc.collect()
    assert seen == []  # nothing ran


def test_generator_based_coroutines_are_awaited_and_plain_generators_not(
    make_dispatcher: Any,
) -> None:
    d = make_dispatcher()
    log: list[str] = []

    @types.coroutine
    def legacy(event: Signup) -> Any:
        yield  # suspends once, like an old-style coroutine awaiting a future
        log.append("legacy")

    def plain_generator(event: Signup) -> Any:
        log.append("plain iterated")  # pragma: no cover - a generator is not awaitable
        yield

    d.register_handler(Signup, legacy)
    d.register_handler(Signup, plain_generator)
    assert run(d.dispatch_async(Signup())) == 2
    assert log == ["legacy"]  # called (counted) but not iterated

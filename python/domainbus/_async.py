"""`dispatch_async` and `dispatch_batch_async`, shared by both backends.

The routing stays in each backend: `dispatcher._plan(event_type)` returns the resolved
registrations (from the same cached snapshot `dispatch` uses) and `dispatcher._take(reg)` returns
the handler to call, or None when it was a weak handler whose target is gone or a `once` handler
someone else already claimed. This module only adds awaiting, so the rules are those of
`dispatch` (see `domainbus.pure.dispatcher`), plus:

- a handler's return value that is awaitable (`inspect.isawaitable`: an ABC-registered class
  counts, a class whose `__await__` is None does not) is awaited as `await` does it (so an
  awaitable without `__await__`, or whose `__await__` returns a non-iterator, is that handler's
  TypeError), before the next handler is called
  (sequential), or, with `concurrent=True`, the awaitables of one event's handlers run together
  as tasks and the event is done when all are. Under "raise" the first failure cancels its
  siblings and propagates; under "collect" and with a callback every task finishes and failures
  are handled in handler order;
- in `nested="queue"` mode the FIFO of an outermost `dispatch_async` lives in a context
  variable, so nested `dispatch_async` calls from its handlers (and their tasks) are queued,
  while separate tasks dispatching at the same time each have their own FIFO. A synchronous
  `dispatch` called from inside is not queued: it runs as its own outermost call;
- an awaitable returned by `on_unhandled` or by an `on_error` callback is awaited too;
- cancelling the awaiting task propagates CancelledError at the handler being awaited; the
  handlers after it are not called, and no coroutine is left un-awaited;
- with metrics on (rule 16 of the dispatcher), each handler call is timed from the call until
  its awaitable is done (with `concurrent=True`: until its task is done) and given to the
  dispatcher's `_record` (no sampling: awaiting costs far more than reading the clock);
- re-entering the coroutine while it runs (a handler sending into the dispatch that called
  it) raises ValueError("coroutine already executing"), as for any coroutine.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol

from domainbus._notes import failure_note, set_batch_index

if TYPE_CHECKING:
    import asyncio

__all__ = ["dispatch_async"]


class _AsyncCapable(Protocol):
    """What a backend's Dispatcher offers this module."""

    @property
    def on_error(self) -> Any: ...
    @property
    def on_unhandled(self) -> Any: ...
    @property
    def nested(self) -> str: ...
    @property
    def metrics_enabled(self) -> bool: ...
    def _record(self, event_type: type, handler: Any, elapsed: int, failed: bool) -> None: ...
    def _plan(self, event_type: type) -> tuple[Any, ...]: ...
    def _take(self, registration: Any) -> Any: ...


AfterDrain = Callable[[BaseException | None], object]


class Frame:
    """One outermost queue-mode async call: its FIFO and the callbacks of `after_drain`."""

    __slots__ = ("after", "fifo")

    def __init__(self) -> None:
        self.fifo: deque[object] = deque()
        self.after: list[AfterDrain] = []


# (dispatcher, frame) of every outermost queue-mode async call running in this context
_FRAMES: ContextVar[tuple[tuple[object, Frame], ...]] = ContextVar(
    "domainbus_async_frames", default=()
)


def _active_frame(dispatcher: object) -> Frame | None:
    for owner, frame in _FRAMES.get():
        if owner is dispatcher:
            return frame
    return None


def after_drain(dispatcher: object, callback: AfterDrain) -> bool:
    """`Dispatcher._after_drain` (see `domainbus.pure.dispatcher`) for the async FIFO of
    `dispatcher` in this context: False when no outermost queue-mode async call runs here."""
    frame = _active_frame(dispatcher)
    if frame is None:
        return False
    frame.after.append(callback)
    return True


def drained(after: list[AfterDrain], failure: BaseException | None) -> None:
    """Run (and forget) the callbacks of `after_drain`, in registration order."""
    callbacks = after[:]
    del after[:]
    for callback in callbacks:
        callback(failure)


async def dispatch_async(
    dispatcher: _AsyncCapable, events: Iterable[object], *, batch: bool, concurrent: bool
) -> int:
    """Dispatch `events` in order, awaiting handlers; returns the handler calls made."""
    if batch:
        try:
            events = iter(events)
        except TypeError:
            raise TypeError(
                "dispatch_batch_async() needs an iterable of events, "
                f"not {type(events).__qualname__}"
            ) from None
    frame = _active_frame(dispatcher)
    if frame is not None:  # "queue" mode, called from a handler: defer to the outermost call
        frame.fifo.extend(events)
        return 0
    run = _Run(dispatcher, concurrent)
    if dispatcher.nested == "immediate":
        for index, event in enumerate(events):
            try:
                await run.event(event, index if batch else None)
            except BaseException as exc:
                if batch:
                    set_batch_index(exc, index)
                raise
    else:
        frame = Frame()
        fifo, after = frame.fifo, frame.after
        token = _FRAMES.set((*_FRAMES.get(), (dispatcher, frame)))
        try:
            for index, event in enumerate(events):
                before = len(run.failures)
                try:
                    await run.event(event, index if batch else None)
                    while fifo:  # the events it queued belong to it (rule 8: batch_index)
                        known = len(run.failures)
                        await run.event(fifo.popleft(), None)
                        if batch:
                            for failure in run.failures[known:]:
                                set_batch_index(failure, index)
                except BaseException as exc:
                    if batch:
                        set_batch_index(exc, index)
                    raise
                if after:
                    new = run.failures[before:]
                    drained(after, new[0] if new else None)
        except BaseException as exc:
            if fifo:
                exc.add_note(f"domainbus: {len(fifo)} queued event(s) were not dispatched")
            drained(after, exc)
            raise
        finally:
            _FRAMES.reset(token)
    if run.failures:
        raise ExceptionGroup(f"domainbus: {len(run.failures)} handler(s) failed", run.failures)
    return run.calls


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


def _as_awaited(awaitable: Awaitable[object]) -> Awaitable[object]:
    """What a task can run: `awaitable` itself, or a coroutine doing `await awaitable` (so an
    odd awaitable fails in the task as `await` would make it fail, not in ensure_future)."""
    import asyncio  # already loaded: this runs inside an event loop

    if inspect.iscoroutine(awaitable) or asyncio.isfuture(awaitable):
        return awaitable
    return _await(awaitable)


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _discard(awaitable: Awaitable[object]) -> None:
    """Drop an awaitable that will never be awaited, without a "never awaited" warning."""
    import asyncio  # already loaded: this runs inside an event loop

    if inspect.iscoroutine(awaitable):
        awaitable.close()
    elif isinstance(awaitable, asyncio.Future):
        awaitable.cancel()


class _Run:
    """The state of one outermost async dispatch: calls made and failures collected."""

    def __init__(self, dispatcher: _AsyncCapable, concurrent: bool) -> None:
        self.d = dispatcher
        self.concurrent = concurrent
        self.policy = dispatcher.on_error
        self.collect = isinstance(self.policy, str) and self.policy == "collect"
        self.raising = isinstance(self.policy, str) and self.policy == "raise"
        self.failures: list[Exception] = []
        self.calls = 0

    async def event(self, event: object, index: int | None) -> None:
        event_type = type(event)
        plan = self.d._plan(event_type)
        if not plan:
            hook = self.d.on_unhandled
            if hook is not None:
                await _maybe_await(hook(event))
            return
        metered = self.d.metrics_enabled
        if self.concurrent:
            await self._concurrently(event, event_type, index, plan, metered)
            return
        for registration in plan:
            handler = self.d._take(registration)
            if handler is None:
                continue
            self.calls += 1
            start = perf_counter_ns() if metered else 0
            try:
                await _maybe_await(handler(event))
            except Exception as exc:
                if metered:
                    self.d._record(event_type, handler, perf_counter_ns() - start, True)
                await self.fail(exc, event, handler, event_type, index)
            except BaseException:
                if metered:
                    self.d._record(event_type, handler, perf_counter_ns() - start, False)
                raise
            else:
                if metered:
                    self.d._record(event_type, handler, perf_counter_ns() - start, False)

    async def _concurrently(
        self,
        event: object,
        event_type: type,
        index: int | None,
        plan: tuple[Any, ...],
        metered: bool,
    ) -> None:
        import asyncio  # already loaded: this runs inside an event loop

        pending: list[tuple[Any, Awaitable[object]]] = []
        starts: list[int] = []  # when each pending handler was called (metrics on)
        try:
            for registration in plan:
                handler = self.d._take(registration)
                if handler is None:
                    continue
                self.calls += 1
                start = perf_counter_ns() if metered else 0
                try:
                    result = handler(event)
                except Exception as exc:
                    if metered:
                        self.d._record(event_type, handler, perf_counter_ns() - start, True)
                    await self.fail(exc, event, handler, event_type, index)
                    continue
                except BaseException:
                    if metered:
                        self.d._record(event_type, handler, perf_counter_ns() - start, False)
                    raise
                if inspect.isawaitable(result):
                    pending.append((handler, result))
                    starts.append(start)
                elif metered:
                    self.d._record(event_type, handler, perf_counter_ns() - start, False)
        except BaseException:
            for (handler, awaitable), start in zip(pending, starts, strict=True):
                _discard(awaitable)
                if metered:
                    self.d._record(event_type, handler, perf_counter_ns() - start, False)
            raise
        if not pending:
            return
        tasks: list[asyncio.Future[object]] = [
            asyncio.ensure_future(_as_awaited(a)) for _, a in pending
        ]
        if metered:
            for task, (handler, _), start in zip(tasks, pending, starts, strict=True):
                task.add_done_callback(self._recorder(event_type, handler, start))
        if self.raising:
            await self._first_failure_cancels(tasks, pending, event, event_type, index)
            return
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for (handler, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                await self.fail_handling(result, event, handler, event_type, index)

    def _recorder(self, event_type: type, handler: Any, start: int) -> Any:
        """A task's done callback counting its handler's call (run before the callbacks
        `gather` adds later, so before the event is done)."""

        def done(task: asyncio.Future[object]) -> None:
            failed = not task.cancelled() and isinstance(task.exception(), Exception)
            self.d._record(event_type, handler, perf_counter_ns() - start, failed)

        return done

    async def _first_failure_cancels(
        self,
        tasks: list[asyncio.Future[object]],
        pending: list[tuple[Any, Awaitable[object]]],
        event: object,
        event_type: type,
        index: int | None,
    ) -> None:
        import asyncio  # already loaded: this runs inside an event loop

        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:  # we were cancelled: take the handlers' tasks down with us
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failed = [
            (handler, task)
            for (handler, _), task in zip(pending, tasks, strict=True)
            if task.done() and not task.cancelled() and task.exception() is not None
        ]
        if not failed:
            return
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        handler, task = failed[0]
        exc = task.exception()
        if exc is not None and not isinstance(exc, Exception):
            raise exc
        assert isinstance(exc, Exception)
        await self.fail_handling(exc, event, handler, event_type, index)

    async def fail_handling(
        self, exc: Exception, event: object, handler: Any, event_type: type, index: int | None
    ) -> None:
        """`fail` for an exception a task ended with: made the one being handled first, as
        `fail` is called from an `except` block everywhere else (rule 8 of the dispatcher)."""
        try:
            raise exc
        except Exception:
            await self.fail(exc, event, handler, event_type, index)

    async def fail(
        self, exc: Exception, event: object, handler: Any, event_type: type, index: int | None
    ) -> None:
        """Apply the error policy to one handler failure (rule 8)."""
        exc.add_note(failure_note(handler, event_type, index))
        if index is not None:
            set_batch_index(exc, index)
        if self.collect:
            self.failures.append(exc)
        elif self.raising:
            raise exc
        else:
            await _maybe_await(self.policy(exc, event, handler))

"""The reference `BatchQueue`, in plain Python (`collections.deque` + `threading.Condition`).

`domainbus.rust.BatchQueue` must behave exactly like this class: same arguments, checks,
exceptions, messages and counts. Producers in any number of threads `put` events; one consumer
(the background thread of `start()`, or the caller of `drain()`) hands them to the dispatcher's
`dispatch_batch` in batches of up to `batch_size`.

Rules (pinned by tests/test_queue.py on both backends):

1. Every event put is dispatched exactly once, unless `stop(drain=False)` was asked: then the
   events left stay queued and `drain()` can still dispatch them.
2. Events from one producer thread are dispatched in the order that thread put them: there is
   only ever one consumer (the started consumer or one `drain()` at a time).
3. Handler errors follow the dispatcher's `on_error`. An exception that reaches the queue stops
   the consumer at the failing event, which counts as dispatched; the events after it go back
   to the front of the queue. In the background consumer the exception is kept and raised by
   the next `put`, `put_many`, `join`, `stop` or `start`, once, with the note
   "domainbus: raised in the BatchQueue consumer thread". `start()` resumes after the failure.
4. Waits (`put` on a full queue, `join`, `stop`) wake every 50 ms, so Ctrl-C is prompt. On
   the consuming thread (in a handler) nothing waits for itself: `put` on a full queue raises
   `queue.Full` at once, `join()` raises RuntimeError, `stop()` returns False at once.
5. After `os.fork()` the child's queues are empty, stopped, not closed, with zeroed counters.
6. At interpreter exit every started queue is stopped with `drain=True`; an error that raises
   is printed to stderr; events still queued then (never started, stopped with `drain=False`,
   left by a failure) are reported with a RuntimeWarning. Nothing is dropped silently. Each
   queue is handled on its own: one whose stop or warning raises (`-W error`, Ctrl-C during its
   drain) is reported on stderr and the next queue still gets its turn, one warning per queue
   with its own count. A Ctrl-C that interrupts `stop()` (or leaving `with`) leaves the
   consumer running: a later `stop()`, or the exit hook, waits for it and drains the rest.
   A consumer still running when the interpreter finalizes (its drain interrupted) is stopped
   by the interpreter like any daemon thread (the Rust backend parks it where it waits for the
   GIL), and the process exits normally.
7. A queue that the garbage collector frees (it was part of a reference cycle) while events
   were still queued reports them with a RuntimeWarning, as at exit.

`capacity` bounds the events waiting to be taken; the consumer's current batch (at most
`batch_size` events) is taken out of it, so `len(q)` can exceed `capacity` by that much.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import threading
import time
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from domainbus.errors import QueueClosed
from domainbus.pure._docs import with_rules

__all__ = ["MAX_SIZE", "BatchQueue"]

MAX_SIZE = 1 << 24  # upper bound of `capacity` and `batch_size` (the Rust queue preallocates)

_RUN, _DRAIN, _STOP_NOW = 0, 1, 2
_WAIT_SLICE = 0.05  # seconds between signal checks while a caller waits
_IDLE_WAKE = 0.25  # seconds an idle consumer sleeps before looking again (a backstop only)
_CONSUMER_NOTE = "domainbus: raised in the BatchQueue consumer thread"
_EXIT_NOTE = "domainbus: raised while stopping a BatchQueue at interpreter exit"
_BUSY = "this BatchQueue is already being consumed (by its started consumer or a drain() call)"


def _type_name(value: object) -> str:
    return type(value).__qualname__


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {_type_name(value)}")
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{name} must be from 1 to {MAX_SIZE}, not {value}")
    return value


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {_type_name(value)}")
    return value


def _deadline(timeout: object) -> float:
    """The `time.monotonic()` deadline of a wait (inf for None), after checking `timeout`."""
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number or None, not {_type_name(timeout)}")
    seconds = float(timeout)
    if not seconds >= 0:
        raise ValueError(f"timeout must be a non-negative number, not {timeout!r}")
    return time.monotonic() + seconds


def _check_max_events(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_events must be an int or None, not {_type_name(value)}")
    if value < 0:
        raise ValueError(f"max_events must be >= 0, not {value}")
    return value


def _full(capacity: int, *, own_consumer: bool = False, accepted: int | None = None) -> queue.Full:
    message = f"the BatchQueue is full (capacity {capacity})"
    if own_consumer:
        message += " and put() was called by the thread consuming it, which cannot wait for itself"
    return _with_accepted(queue.Full(_suffixed(message, accepted)), accepted)


def _closed(accepted: int | None = None) -> QueueClosed:
    return _with_accepted(QueueClosed(_suffixed("the BatchQueue is stopped", accepted)), accepted)


def _suffixed(message: str, accepted: int | None) -> str:
    return message if accepted is None else f"{message}; put_many() put {accepted} event(s) before"


E = TypeVar("E", bound=BaseException)


def _with_accepted(exc: E, accepted: int | None) -> E:
    if accepted is not None:
        exc.accepted = accepted  # type: ignore[attr-defined]
    return exc


class BatchQueue:
    """A bounded multi-producer queue whose single consumer dispatches events in batches.

    `dispatcher` is anything with a `dispatch_batch(iterable) -> int` method (a domainbus
    `Dispatcher`). `capacity` (1 to 2**24) bounds the events waiting to be taken; `put` blocks
    or raises `queue.Full` beyond it. `batch_size` (1 to 2**24) is the most events handed to one
    `dispatch_batch` call. See the module docstring for the rules.
    """

    def __init__(self, dispatcher: Any, *, capacity: int = 65536, batch_size: int = 1024) -> None:
        dispatch_batch = getattr(dispatcher, "dispatch_batch", None)
        if not callable(dispatch_batch):
            raise TypeError(
                "BatchQueue needs a dispatcher with a dispatch_batch() method, "
                f"not {_type_name(dispatcher)}"
            )
        self._capacity = _check_size("capacity", capacity)
        self._batch_size = _check_size("batch_size", batch_size)
        self._dispatch_batch: Callable[[Iterable[object]], object] = dispatch_batch
        self._reset()
        _track(self)

    def _reset(self) -> None:
        """Fresh state: empty, not started, not closed (also the child's state after fork)."""
        self._lock = threading.RLock()  # re-entrant: some helpers take it and run with it held
        self._changed = threading.Condition(self._lock)  # blocked producers and join() wait here
        self._wakeup = threading.Condition(self._lock)  # the idle consumer waits here
        self._events: deque[object] = deque()
        self._pending: deque[object] = deque()  # the consumer's batch; consulted first
        self._put_count = 0
        self._dispatched = 0  # handed to the dispatcher; written only by the consumer role holder
        self._completed = 0  # finished dispatching (what join() waits for); see _finish_batch
        self._closed = False
        self._stop_mode = _RUN
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None  # set from start() until stop() joins it
        self._worker_active = False  # the worker's consumer loop has not finished yet
        self._consuming = False  # the consumer role: held by the worker or a drain() call
        self._consumer: int | None = None  # thread ident of the role holder
        self._sleeping = False
        self._reported = False  # the exit hook reported what is left (rule 6)

    def __del__(self) -> None:
        """Rule 7: a queue freed with events still queued reports them."""
        try:
            left = len(self._events) + len(self._pending)
            if left and not self._reported:
                self._reported = True
                warnings.warn(
                    f"domainbus: a BatchQueue was freed with {left} undispatched event(s)",
                    RuntimeWarning,
                    stacklevel=1,
                )
        except AttributeError:  # __init__ failed before _reset()
            pass

    # -- introspection ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        """True once `stop()` was called: `put` raises QueueClosed."""
        return self._closed

    @property
    def put_count(self) -> int:
        """Events accepted by `put`/`put_many` so far."""
        return self._put_count

    @property
    def dispatched_count(self) -> int:
        """Events handed to the dispatcher so far (a failing event counts)."""
        return self._dispatched

    def __len__(self) -> int:
        """Events put and not yet dispatched (waiting, or in the consumer's batch)."""
        return len(self._events) + len(self._pending)

    # -- producers --------------------------------------------------------------------------

    def put(self, event: object, *, block: bool = True, timeout: float | None = None) -> None:
        """Queue `event`. When full: wait for room (up to `timeout` seconds, then raise
        `queue.Full`), or raise `queue.Full` at once when `block` is False.

        Raises QueueClosed after `stop()`, or the consumer's pending exception (rule 3); the
        event is not queued then.
        """
        _check_flag("block", block)
        deadline = _deadline(timeout)
        with self._lock:
            self._check_accepting()
            if len(self._events) >= self._capacity:
                self._wait_for_room(block, deadline, None)
            self._events.append(event)
            self._added(1)

    def put_many(
        self, events: Iterable[object], *, block: bool = True, timeout: float | None = None
    ) -> int:
        """Queue every event of `events` in order, as `put` would; returns how many.

        `timeout` bounds the whole call. The `queue.Full` or QueueClosed it raises has an
        `accepted` attribute: the events before that index went in; the one at that index
        was taken from the iterable but not queued. Any other exception gets a note saying
        how many went in. A list or tuple is copied in slices under the lock; any other
        iterable is read one event at a time outside it (its code may use the queue).
        """
        _check_flag("block", block)
        deadline = _deadline(timeout)
        source: Iterator[object] | None = None
        if not isinstance(events, list | tuple):
            try:
                source = iter(events)
            except TypeError:
                raise TypeError(
                    f"put_many() needs an iterable of events, not {_type_name(events)}"
                ) from None
        accepted = 0
        try:
            with self._lock:
                self._check_accepting(0)
            if source is None:
                sequence: list[object] | tuple[object, ...] = events  # type: ignore[assignment]
                while accepted < len(sequence):
                    with self._lock:
                        self._check_accepting(accepted)
                        if len(self._events) >= self._capacity:
                            self._wait_for_room(block, deadline, accepted)
                        room = self._capacity - len(self._events)
                        chunk = sequence[accepted : accepted + room]
                        self._events.extend(chunk)
                        self._added(len(chunk))
                    accepted += len(chunk)
            else:
                for event in source:
                    with self._lock:
                        self._check_accepting(accepted)
                        if len(self._events) >= self._capacity:
                            self._wait_for_room(block, deadline, accepted)
                        self._events.append(event)
                        self._added(1)
                    accepted += 1
        except BaseException as exc:
            if not (isinstance(exc, queue.Full | QueueClosed) and hasattr(exc, "accepted")):
                exc.add_note(
                    f"domainbus: put_many() put {accepted} event(s) before this was raised"
                )
            raise
        return accepted

    def _added(self, count: int) -> None:
        """Count events just appended and wake the consumer if it sleeps (lock held)."""
        self._put_count += count
        if self._sleeping:
            self._wakeup.notify()

    def _check_accepting(self, accepted: int | None = None) -> None:
        """Raise the consumer's pending exception, or QueueClosed. Call with the lock held."""
        self._raise_error()
        if self._closed:
            raise _closed(accepted)

    def _raise_error(self) -> None:
        error = self._error
        if error is not None:
            self._error = None
            raise error

    def _wait_for_room(self, block: bool, deadline: float, accepted: int | None) -> None:
        """Wait (lock held) until the queue has room; raise queue.Full on timeout."""
        if not block:
            raise _full(self._capacity, accepted=accepted)
        if self._consumer == threading.get_ident():
            raise _full(self._capacity, own_consumer=True, accepted=accepted)
        while len(self._events) >= self._capacity:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _full(self._capacity, accepted=accepted)
            self._changed.wait(min(_WAIT_SLICE, remaining))
            self._check_accepting(accepted)

    # -- consumer ---------------------------------------------------------------------------

    def drain(self, max_events: int | None = None) -> int:
        """Dispatch what is queued (at most `max_events`) in the calling thread, in batches;
        returns the handler calls made. A handler's exception propagates (rule 3).

        The return value counts handler calls, not events (as `dispatch_batch` does): an event
        with three handlers adds 3, one with none adds 0. `max_events` counts events; so does
        `dispatched_count` (read it before and after for the events this call took).

        Raises RuntimeError while the started consumer or another `drain()` is consuming.
        """
        left = _check_max_events(max_events)
        self._acquire_role(threading.get_ident())
        try:
            calls = 0
            while left is None or left > 0:
                limit = self._batch_size if left is None else min(self._batch_size, left)
                try:
                    taken, batch_calls = self._dispatch_some(limit, interruptible=False)
                finally:
                    self._finish_batch()
                calls += batch_calls
                if taken == 0:
                    return calls
                if left is not None:
                    left -= taken
            return calls
        finally:
            self._release_role()

    def start(self) -> None:
        """Start the background consumer (a daemon thread that sleeps while the queue is
        empty and dispatches batches as they come).

        Raises the consumer's pending exception (rule 3), RuntimeError if already started,
        after `stop()`, or while a `drain()` is running.
        """
        with self._lock:
            self._raise_error()
            if self._closed:
                raise RuntimeError("a stopped BatchQueue cannot be started again")
            if self._worker_active:
                raise RuntimeError("this BatchQueue is already started")
            self._worker_active = True
        try:
            self._launch()
        except BaseException:
            self._worker_active = False
            raise

    def _launch(self) -> None:
        with self._lock:
            finished, self._worker = self._worker, None
        if finished is not None:
            finished.join()  # the thread of a consumer that failed: it is ending
        self._acquire_role(None)  # the worker records its own ident when it runs
        try:
            worker = threading.Thread(
                target=self._consume, name="domainbus-BatchQueue", daemon=True
            )
            with self._lock:
                self._worker = worker
            worker.start()
        except BaseException:
            with self._lock:
                self._worker = None
                self._release_role()
            raise

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Close the queue (`put` raises QueueClosed from now on), then wait for the consumer.

        `drain=True`: what is queued is dispatched first (by the consumer, or by the calling
        thread when none is started); `drain=False`: the consumer ends after the event in hand
        and the rest stays queued for `drain()`. Returns False if the consumer was still busy
        after `timeout` seconds (call `stop()` again to wait more) or when called from the
        consumer's own thread; True once it has finished. Raises the consumer's pending
        exception (rule 3) after closing.
        """
        _check_flag("drain", drain)
        deadline = _deadline(timeout)
        with self._lock:
            self._closed = True
            self._stop_mode = max(self._stop_mode, _DRAIN if drain else _STOP_NOW)
            self._wakeup.notify_all()
            self._changed.notify_all()
            worker = self._worker
            on_consumer = self._consumer == threading.get_ident()
        if on_consumer:
            return False
        if worker is not None:
            # Our own state, not `worker.is_alive()`: on CPython 3.11 a join() interrupted by
            # Ctrl-C leaves is_alive() False while the thread still runs.
            with self._lock:
                while self._worker_active:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(min(_WAIT_SLICE, remaining))
                if self._worker is worker:
                    self._worker = None
        elif drain and self._error is None:
            self.drain()
        with self._lock:
            self._raise_error()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every event put before the call has been dispatched, its handlers done
        (by the consumer or by `drain()` in other threads). Returns False if `timeout` seconds
        passed first.

        Raises the consumer's pending exception (rule 3), and RuntimeError from the thread
        consuming this queue (it would wait for itself).
        """
        deadline = _deadline(timeout)
        with self._lock:
            self._raise_error()
            if self._consumer == threading.get_ident():
                raise RuntimeError(
                    "join() called from the thread consuming this BatchQueue would wait for itself"
                )
            target = self._put_count
            while self._completed < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(_WAIT_SLICE, remaining))
                self._raise_error()
            self._raise_error()
            return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _acquire_role(self, consumer: int | None) -> None:
        with self._lock:
            if self._consuming:
                raise RuntimeError(_BUSY)
            self._consuming = True
            self._consumer = consumer

    def _release_role(self) -> None:
        with self._lock:
            self._consuming = False
            self._consumer = None

    def _consume(self) -> None:
        """The worker thread's loop: sleep while empty, dispatch batches, obey stop(); keep
        the exception that stops a batch (rule 3)."""
        with self._lock:
            self._consumer = threading.get_ident()
        failure: BaseException | None = None
        try:
            while True:
                with self._lock:
                    while self._stop_mode == _RUN and not (self._events or self._pending):
                        self._sleeping = True
                        try:
                            self._wakeup.wait(_IDLE_WAKE)
                        finally:
                            self._sleeping = False
                    if self._stop_mode == _STOP_NOW or not (self._events or self._pending):
                        return
                self._dispatch_some(self._batch_size, interruptible=True)
                self._finish_batch()
        except BaseException as exc:
            exc.add_note(_CONSUMER_NOTE)
            failure = exc
        finally:
            with self._lock:  # all at once: whoever sees the exception may start() or drain()
                self._release_role()
                self._worker_active = False
                if failure is not None and self._error is None:
                    self._error = failure
                self._finish_batch()

    def _finish_batch(self) -> None:
        """The end of a batch: what was handed to the dispatcher is done; wake join()."""
        with self._lock:
            self._completed = self._dispatched
            self._changed.notify_all()

    def _dispatch_some(self, limit: int, *, interruptible: bool) -> tuple[int, int]:
        """Hand up to `limit` events to the dispatcher; returns (events taken, handler calls).

        The batch is topped up from the queue under the lock, then fed lazily: the events the
        dispatcher did not take (it raised, or stop(drain=False) came) stay at the front. The
        caller calls `_finish_batch` once it has dealt with an exception.
        """
        with self._lock:
            want = limit - len(self._pending)
            if want > 0 and self._events:
                if want >= len(self._events):
                    self._pending.extend(self._events)
                    self._events.clear()
                else:
                    popleft = self._events.popleft
                    self._pending.extend(popleft() for _ in range(want))
                self._changed.notify_all()
            if not self._pending:
                return 0, 0
        before = self._dispatched
        calls = self._dispatch_batch(self._feed(limit, interruptible))
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
            raise TypeError(f"dispatch_batch() must return an int, not {_type_name(calls)}")
        return self._dispatched - before, calls

    def _feed(self, limit: int, interruptible: bool) -> Iterator[object]:
        pending = self._pending
        for _ in range(limit):
            if not pending or (interruptible and self._stop_mode == _STOP_NOW):
                return
            event = pending.popleft()
            self._completed = self._dispatched  # the dispatcher is done with the previous ones
            self._dispatched += 1
            yield event

    # -- process lifecycle (rules 5 and 6) ----------------------------------------------------

    def _at_exit(self) -> None:
        if self._worker is not None:
            try:
                self.stop(drain=True)
            except BaseException as exc:
                exc.add_note(_EXIT_NOTE)
                traceback.print_exception(exc)
        left = len(self)
        self._reported = True
        if left:
            warnings.warn(
                f"domainbus: a BatchQueue still held {left} undispatched event(s) "
                "at interpreter exit",
                RuntimeWarning,
                stacklevel=1,
            )


_live: weakref.WeakSet[BatchQueue] = weakref.WeakSet()

BatchQueue.__doc__ = with_rules(BatchQueue.__doc__, __doc__)  # help() shows every rule

_hooks_installed = False


def _track(q: BatchQueue) -> None:
    """Remember `q` for the fork and exit hooks, installed with the first queue."""
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_at_exit)
    _live.add(q)


def _after_fork_in_child() -> None:
    for q in list(_live):
        q._reset()


def _at_exit() -> None:
    """Rule 6 for every queue: each is stopped and checked on its own, so one that raises (a
    warning turned into an error, Ctrl-C during its drain) is reported and the others still
    get their turn."""
    for q in list(_live):
        try:
            q._at_exit()
        except BaseException as exc:
            traceback.print_exception(exc)

"""The reference `Dispatcher`, in plain Python: the specification in code.

`domainbus.rust.Dispatcher` must behave exactly like this class; the parity tests drive both
with the same random programs and compare every call, return value and exception. Read this
module to learn what a dispatcher does; the numbered rules below are the README's.

1. Routing follows the MRO: a handler registered for class C is called for every event whose
   type is C or a subclass of C. Any object can be dispatched. Classes are told apart by
   identity (a metaclass's `__eq__`/`__hash__` plays no part), and the MRO is the one the
   interpreter uses (`type.__mro__`, even when a metaclass defines its own `__mro__`).
2. Higher `priority` first; equal priorities in registration order (one global sequence).
   Registering the same (class, handler) pair again is a no-op: the handler is compared (`==`)
   with the class's registrations in order, each at most once. Python code those comparisons
   run may change the registry (an `__eq__` that registers a handler): registrations added
   meanwhile are compared too, until none is new, and every change is kept. `unregister_handler`
   compares in order with the registrations as they were when it was called and removes the
   first equal one (False if it was gone by then).
3. The resolved handler list of each concrete type is cached until the registry changes.
4. The registry is copy-on-write: a change made while an event is being dispatched takes
   effect from the next event on; the event in flight keeps the list it started with.
5. Nested dispatch is "immediate" (depth-first) or "queue" (a per-thread FIFO drained after
   the current event's handlers, breadth-first, by the outermost call).
6. `once` handlers are removed before their first call; `weak` handlers vanish with their target.
7. `on_unhandled(event)` is called when no handler is registered for the event's type.
8. Errors follow `on_error`: "raise", "collect" (ExceptionGroup at the end) or a callback,
   told apart by type (a callable is a callback, whatever its `__eq__` says). The callback is
   called while the exception is being handled: it has its traceback, `sys.exc_info()` and
   `logging.exception()` see it, and an exception the callback raises chains to it.
   An exception raised out of `dispatch_batch` / `dispatch_batch_async` while event i of the
   batch was being dispatched (by one of its handlers, by the handlers of the events it queued
   in "queue" mode, by `on_unhandled` or by the `on_error` callback) carries
   `exc.batch_index == i` (0-based): under "raise", events before i were fully handled, event
   i partly (its earlier handlers ran), the events after it not at all. Under "collect" every
   member of the ExceptionGroup carries its own `batch_index` (every event was attempted); the
   group itself has none. An exception from the batch's iterator has none (no event failed),
   nor has one whose type refuses new attributes. The PEP 678 note ("at batch index i") stays.
9. A handler that returns a coroutine is an error of that handler (the coroutine is closed).
10. Bad input is a TypeError (ValueError, OverflowError) at the call that made it. A handler's
    description in error notes is `module.qualname`, or its repr when those cannot be read (a
    `__getattr__` that raises counts as absent: the handler's own error is kept).
11. Threads may register, unregister and dispatch at the same time. A `Dispatcher` subclass may
    take its own `__init__` arguments and pass the options on with `super().__init__(**options)`.
12. Delivery contract (what `outbox.relay`, `domainbus run` and broker publishers rely on):
    anything events are delivered to is an object with `dispatch_batch(events) -> int`. A normal
    return means every event of the batch was delivered. An exception with an int
    `batch_index` inside the batch means events [0, batch_index) were delivered, the one at
    `batch_index` failed and the ones after it were not attempted. An ExceptionGroup every
    member of which has such a `batch_index` means every event was attempted and exactly those
    failed. Any other exception means none of the batch counts as delivered. Progress is never
    inferred from how far the target iterated the batch (it may well `list()` it first).
13. A long `dispatch_batch` lets signal handlers run (Ctrl-C raises KeyboardInterrupt within
    about a thousand events) and lets other threads take the GIL, even when the handlers and the
    iterator are C code.
14. At interpreter exit a daemon thread still dispatching is stopped by the interpreter where
    it waits for the GIL (the Rust backend parks it there, as CPython 3.14 does); the process
    exits normally.
15. Sub-interpreters get this backend (the Rust extension refuses to import there).
16. Metrics are opt-in (`metrics=True`, or `enable_metrics()`): then every handler call, on
    every dispatch path (`dispatch`, `dispatch_batch`, the async ones, a BatchQueue's
    consumer), is counted per (the event's class, the handler) by the dispatcher itself (in
    the Rust core on that backend): calls, failures and time. `metrics()` returns a snapshot
    as plain data (a list of dicts, slowest first), `reset_metrics()` empties the table, and
    metrics off cost nothing. Switching on or off and resetting take effect from the next
    event on. What is counted and timed, and how: `domainbus.pure.metrics`.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from types import CoroutineType, MethodType
from typing import Any, Literal, TypeVar

from domainbus._async import AfterDrain, dispatch_async, drained
from domainbus._notes import describe_handler, failure_note, set_batch_index
from domainbus.pure._docs import with_rules
from domainbus.pure.commands import Commands
from domainbus.pure.metrics import MetricsTable, Row

__all__ = ["Dispatcher"]

H = TypeVar("H", bound=Callable[..., Any])
ErrorCallback = Callable[[Exception, Any, Callable[..., Any]], object]
OnError = Literal["raise", "collect"] | ErrorCallback

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_CACHE_LIMIT = 4096  # resolved lists kept per registry version; the cache is reset past this
_mro_of: Callable[[type], tuple[type, ...]] = type.__dict__["__mro__"].__get__  # the real MRO


class _Registration:
    """One (class, handler) registration. `target` is the handler, or a weak reference to it."""

    __slots__ = ("consumed", "event_type", "once", "priority", "seq", "target", "weak")

    def __init__(
        self, event_type: type, target: Any, priority: int, seq: int, once: bool, weak: bool
    ) -> None:
        self.event_type = event_type
        self.target = target
        self.priority = priority
        self.seq = seq
        self.once = once
        self.weak = weak
        self.consumed = False

    def live_handler(self) -> Callable[..., Any] | None:
        """The handler, or None when it was held weakly and has been collected."""
        if self.weak:
            handler: Callable[..., Any] | None = self.target()
            return handler
        return self.target  # type: ignore[no-any-return]


# registry: id(class) -> its registrations (which hold the class, so the id stays its own)
_Registry = dict[int, tuple[_Registration, ...]]


class _State:
    """An immutable registry snapshot plus the resolution cache that belongs to it.

    Both are keyed by the class's identity. A cache entry is `(class, registrations, direct)`:
    it holds its class, so while the entry lives no other class can have that id (no identity
    check is needed on lookup). `direct` is the fast path of `dispatch`: the handlers as a
    tuple of plain callables when none of the registrations is `once` or `weak` (nothing to
    claim or dereference per call) and metrics are off (`metered`), else None; `()` when
    there are none.
    """

    __slots__ = ("cache", "metered", "registry")

    def __init__(self, registry: _Registry, metered: bool = False) -> None:
        self.registry = registry
        self.metered = metered
        self.cache: dict[int, _Entry] = {}

    def resolve(self, event_type: type) -> tuple[_Registration, ...]:
        """Registrations for `event_type` along its MRO, highest priority first, then oldest."""
        entry = self.cache.get(id(event_type))
        return (entry if entry is not None else self.entry(event_type))[1]

    def entry(self, event_type: type) -> _Entry:
        """Resolve `event_type` and cache the result (rules 1-3)."""
        registry = self.registry
        found = [r for klass in _mro_of(event_type) for r in registry.get(id(klass), ())]
        found.sort(key=lambda r: (-r.priority, r.seq))
        regs = tuple(found)
        plain = not self.metered and not any(r.once or r.weak for r in regs)
        entry = (event_type, regs, tuple(r.target for r in regs) if plain else None)
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache = {}
        self.cache[id(event_type)] = entry
        return entry


# (class, its registrations in call order, their plain handlers or None: see _State)
_Entry = tuple[type, tuple[_Registration, ...], tuple[Callable[..., Any], ...] | None]


def _refuse_coroutine(handler: Callable[..., Any], result: CoroutineType[Any, Any, Any]) -> None:
    """Rule 9: a coroutine returned to sync dispatch is closed and is its handler's error."""
    result.close()
    raise TypeError(
        f"handler {describe_handler(handler)} returned a coroutine: "
        "async handlers need dispatch_async()"
    )


def _check_options(priority: object, once: object, weak: object) -> None:
    if not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {type(priority).__qualname__}")
    if not _I64_MIN <= priority <= _I64_MAX:
        raise OverflowError("priority must fit in a signed 64-bit integer")
    if not isinstance(once, bool):
        raise TypeError(f"once must be a bool, not {type(once).__qualname__}")
    if not isinstance(weak, bool):
        raise TypeError(f"weak must be a bool, not {type(weak).__qualname__}")


def _check_event_type(event_type: object) -> None:
    if not isinstance(event_type, type):
        raise TypeError(f"event_type must be a class, not {type(event_type).__qualname__}")


class Dispatcher(Commands):  # commands, dependencies, middleware: domainbus.pure.commands
    """Routes events to the handlers registered for their class or any base class.

    `on_error`: "raise" (default) lets a handler's exception propagate unchanged, with a note
    naming the handler, the event type and the batch index; nothing after it runs. "collect"
    runs every handler of every event, then raises an ExceptionGroup of all failures in order.
    A callable is called as `on_error(exc, event, handler)` and dispatch goes on; if it raises,
    that propagates. Exceptions that are not `Exception`s (KeyboardInterrupt...) always
    propagate at once.

    `on_unhandled(event)` is called for an event no handler is registered for.

    `nested`: what a handler's own `dispatch` does. "immediate": the inner event is dispatched
    at once, depth-first. "queue": it is appended to a per-thread FIFO that the outermost call
    drains after each of its events, breadth-first; the inner call returns 0 and the outermost
    call's return value counts every handler call it caused.

    `metrics`: count every handler call per (event class, handler) from the start (rule 16;
    `enable_metrics()` does it later).
    """

    def __init__(
        self,
        *,
        on_error: OnError = "raise",
        on_unhandled: Callable[[Any], object] | None = None,
        nested: Literal["immediate", "queue"] = "immediate",
        metrics: bool = False,
    ) -> None:
        if not (
            on_error in ("raise", "collect") if isinstance(on_error, str) else callable(on_error)
        ):
            raise TypeError(f"on_error must be 'raise', 'collect' or a callable, not {on_error!r}")
        if on_unhandled is not None and not callable(on_unhandled):
            raise TypeError(
                f"on_unhandled must be a callable or None, not {type(on_unhandled).__qualname__}"
            )
        if nested not in ("immediate", "queue"):
            raise ValueError(f"nested must be 'immediate' or 'queue', not {nested!r}")
        if not isinstance(metrics, bool):
            raise TypeError(f"metrics must be a bool, not {type(metrics).__qualname__}")
        self._on_error = on_error
        self._collect = isinstance(on_error, str) and on_error == "collect"
        self._raise = isinstance(on_error, str) and on_error == "raise"
        self._on_unhandled = on_unhandled
        self._nested = nested
        self._queueing = nested == "queue"
        self._lock = threading.RLock()  # re-entrant: a weakref callback may fire while held
        self._next_seq = 0
        self._metrics = MetricsTable()
        self._meter: MetricsTable | None = self._metrics if metrics else None  # None: off
        self._state = _State({}, metered=metrics)
        self._local = threading.local()  # .fifo: the FIFO of the outermost "queue" call

    @property
    def on_error(self) -> OnError:
        return self._on_error

    @property
    def on_unhandled(self) -> Callable[[Any], object] | None:
        return self._on_unhandled

    @property
    def nested(self) -> str:
        return self._nested

    # -- metrics (rule 16; domainbus.pure.metrics) ------------------------------------------

    @property
    def metrics_enabled(self) -> bool:
        return self._meter is not None

    def enable_metrics(self) -> None:
        """Count every handler call from the next event on (the table is kept)."""
        with self._lock:
            self._meter = self._metrics
            self._publish(self._state.registry)

    def disable_metrics(self) -> None:
        """Stop counting from the next event on; `metrics()` still reports what was counted."""
        with self._lock:
            self._meter = None
            self._publish(self._state.registry)

    def reset_metrics(self) -> None:
        """Forget every row counted so far (and the classes they hold)."""
        with self._lock:
            self._metrics = MetricsTable()
            if self._meter is not None:
                self._meter = self._metrics

    def metrics(self) -> list[dict[str, Any]]:
        """Per (event type, handler) called since the last reset: a dict of `event_type`
        (qualname), `handler` (module.qualname), `calls`, `failures`, `timed_calls` and
        `total_ns` (estimated from the timed calls), slowest first."""
        return self._metrics.snapshot()

    def _record(self, event_type: type, handler: object, elapsed: int, failed: bool) -> None:
        """Count one call timed by its caller (the general async path)."""
        meter = self._meter
        if meter is not None:
            meter.row(event_type, handler).record(elapsed, failed)

    # -- registry ---------------------------------------------------------------------------

    def register_handler(
        self,
        event_type: type,
        handler: H,
        *,
        priority: int = 0,
        once: bool = False,
        weak: bool = False,
    ) -> H:
        """Call `handler(event)` for every event of `event_type` or a subclass; returns handler.

        `once`: removed before its first call. `weak`: held by a weak reference (WeakMethod
        for bound methods) and dropped when its target is collected. Registering the same
        (class, handler) pair again changes nothing.
        """
        _check_event_type(event_type)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__qualname__}")
        _check_options(priority, once, weak)
        target: Any = self._inject(handler, weak)  # its dependencies (pure/commands.py)
        if weak:
            ref_type = weakref.WeakMethod if isinstance(handler, MethodType) else weakref.ref
            target = ref_type(handler, self._reap)
        with self._lock:
            if self._find_equal(event_type, handler, rescan=True) is not None:
                return handler
            seq = self._next_seq
            self._next_seq += 1
            reg = _Registration(event_type, target, priority, seq, once, weak)
            key = id(event_type)
            existing = self._state.registry.get(key, ())
            self._publish({**self._state.registry, key: (*existing, reg)})
        return handler

    def _find_equal(
        self, event_type: type, handler: object, *, rescan: bool
    ) -> _Registration | None:
        """The registration of exactly `event_type` whose handler `== handler` (rule 2)."""
        compared: list[_Registration] = []
        while True:
            current = self._state.registry.get(id(event_type), ())
            fresh = [r for r in current if not any(r is seen for seen in compared)]
            if not fresh:
                return None
            for reg in fresh:
                existing = reg.live_handler()
                if existing is not None and existing == handler:
                    return reg
                compared.append(reg)
            if not rescan:
                return None

    def handler(
        self, event_type: type, *, priority: int = 0, once: bool = False, weak: bool = False
    ) -> Callable[[H], H]:
        """Decorator form of `register_handler`."""
        _check_event_type(event_type)
        _check_options(priority, once, weak)

        def decorator(handler: H) -> H:
            return self.register_handler(
                event_type, handler, priority=priority, once=once, weak=weak
            )

        return decorator

    def unregister_handler(self, event_type: type, handler: Callable[..., Any]) -> bool:
        """Remove the registration of `handler` for exactly `event_type`; False if none."""
        _check_event_type(event_type)
        with self._lock:
            reg = self._find_equal(event_type, handler, rescan=False)
            return reg is not None and self._remove(reg)

    def handlers_for(self, event_type: type) -> tuple[Callable[..., Any], ...]:
        """The handlers an event of `event_type` would be dispatched to, in call order."""
        _check_event_type(event_type)
        live = (r.live_handler() for r in self._state.resolve(event_type))
        return tuple(h for h in live if h is not None)

    def clear(self) -> None:
        """Remove every event handler and command handler; what was `provide`d and the
        middleware stay (pure/commands.py rule 1)."""
        with self._lock:
            self._publish({})
            self._clear_commands()

    def _publish(self, registry: _Registry) -> None:
        self._state = _State(registry, metered=self._meter is not None)
        # the memo of resolved lists holds the old registrations, and so their handlers: an
        # unregistered handler must not stay alive (or weakly registered) until a dispatch
        self._metrics.forget_plans()

    def _remove(self, reg: _Registration) -> bool:
        """Unregister `reg`; False when it was not registered (any more)."""
        with self._lock:
            key = id(reg.event_type)
            current = self._state.registry.get(key, ())
            remaining = tuple(r for r in current if r is not reg)
            if len(remaining) == len(current):
                return False
            registry = dict(self._state.registry)
            if remaining:
                registry[key] = remaining
            else:
                registry.pop(key, None)
            self._publish(registry)
            return True

    def _reap(self, ref: object) -> None:
        """Weakref callback: drop the registrations whose target was just collected."""
        with self._lock:
            for regs in list(self._state.registry.values()):
                for reg in regs:
                    if reg.target is ref:
                        self._remove(reg)

    def _plan(self, event_type: type) -> tuple[_Registration, ...]:
        """The registrations an event of `event_type` goes to now (also used by async dispatch)."""
        return self._state.resolve(event_type)

    def _take(self, reg: _Registration) -> Callable[..., Any] | None:
        """The handler to call for `reg`, or None: weak target gone, or `once` already claimed."""
        handler = reg.live_handler()
        if handler is None or (reg.once and not self._consume(reg)):
            return None
        return handler

    def _consume(self, reg: _Registration) -> bool:
        """Claim a `once` registration; False when another call already claimed it."""
        with self._lock:
            if reg.consumed:
                return False
            reg.consumed = True
            self._remove(reg)
            return True

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(self, event: object) -> int:
        """Call every handler of `event`; returns the number of handler calls made."""
        if self._queueing:
            return self._run_queued((event,), batch=False)
        # The fast path (rules 1-4): the cached plain handlers of the event's class, read from
        # the snapshot current now. Anything else (no handler, once/weak) goes the general way.
        entry = self._state.cache.get(id(type(event)))
        handlers = entry[2] if entry is not None else None
        if not handlers:
            failures: list[Exception] | None = [] if self._collect else None
            calls = self._dispatch_one(event, None, failures)
            if failures:
                raise _group(failures)
            return calls
        failures = None
        for handler in handlers:
            try:
                result = handler(event)
                if result is not None and type(result) is CoroutineType:
                    _refuse_coroutine(handler, result)
            except Exception as exc:
                exc.add_note(failure_note(handler, type(event), None))
                if self._raise:
                    raise
                failures = self._absorb(exc, event, handler, failures)
        if failures:
            raise _group(failures)
        return len(handlers)

    def dispatch_batch(self, events: Iterable[object]) -> int:
        """Dispatch each event of an iterable in order; returns the total handler calls."""
        try:
            iterator = iter(events)
        except TypeError:
            raise TypeError(
                f"dispatch_batch() needs an iterable of events, not {type(events).__qualname__}"
            ) from None
        if self._queueing:
            return self._run_queued(iterator, batch=True)
        raising = self._raise
        failures: list[Exception] | None = [] if self._collect else None
        calls = 0
        for index, event in enumerate(iterator):
            try:
                # the same fast path as `dispatch`; `self._state` is read per event (rule 4)
                entry = self._state.cache.get(id(type(event)))
                handlers = entry[2] if entry is not None else None
                if not handlers:
                    calls += self._dispatch_one(event, index, failures)
                    continue
                for handler in handlers:
                    try:
                        result = handler(event)
                        if result is not None and type(result) is CoroutineType:
                            _refuse_coroutine(handler, result)
                    except Exception as exc:
                        exc.add_note(failure_note(handler, type(event), index))
                        set_batch_index(exc, index)
                        if raising:
                            raise
                        failures = self._absorb(exc, event, handler, failures)
                calls += len(handlers)
            except BaseException as exc:  # rule 8: whatever escapes event i carries i
                set_batch_index(exc, index)
                raise
        if failures:
            raise _group(failures)
        return calls

    def dispatch_async(
        self, event: object, *, concurrent: bool = False
    ) -> Coroutine[Any, Any, int]:
        """Awaitable `dispatch`: awaitable handler results are awaited (see `domainbus._async`)."""
        return dispatch_async(self, (event,), batch=False, concurrent=concurrent)

    def dispatch_batch_async(
        self, events: Iterable[object], *, concurrent: bool = False
    ) -> Coroutine[Any, Any, int]:
        """Awaitable `dispatch_batch`; `concurrent=True` runs one event's handlers together."""
        return dispatch_async(self, events, batch=True, concurrent=concurrent)

    def _run_queued(self, events: Iterable[object], *, batch: bool) -> int:
        """Rule 5, "queue" mode: an outermost call drains the per-thread FIFO after each event;
        a call from a handler appends to it and returns 0."""
        fifo: deque[object] | None = getattr(self._local, "fifo", None)
        if fifo is not None:  # called from a handler: defer to the outermost call
            fifo.extend(events)
            return 0
        failures: list[Exception] | None = [] if self._collect else None
        calls = 0
        fifo = self._local.fifo = deque()
        after: list[AfterDrain] = []
        self._local.after = after
        try:
            for index, event in enumerate(events):
                before = len(failures) if failures is not None else 0
                try:
                    calls += self._dispatch_one(event, index if batch else None, failures)
                    while fifo:  # the events it queued belong to it (rule 8: batch_index)
                        known = len(failures) if failures is not None else 0
                        calls += self._dispatch_one(fifo.popleft(), None, failures)
                        if batch and failures is not None:
                            for failure in failures[known:]:
                                set_batch_index(failure, index)
                except BaseException as exc:
                    if batch:
                        set_batch_index(exc, index)
                    raise
                if after:
                    drained(
                        after, failures[before] if failures and len(failures) > before else None
                    )
        except BaseException as exc:
            if fifo:
                exc.add_note(f"domainbus: {len(fifo)} queued event(s) were not dispatched")
            drained(after, exc)
            raise
        finally:
            self._local.fifo = self._local.after = None
        if failures:
            raise _group(failures)
        return calls

    def _after_drain(self, callback: AfterDrain) -> bool:
        """Call `callback` when this thread's "queue" FIFO is empty again; False if none is open.

        The unit of work's hook (`domainbus.uow`): inside an outermost "queue"-mode call its
        events are only appended to the FIFO, so it settles their outbox rows when they were
        really dispatched. `callback(None)` runs once the outermost call has drained the FIFO
        after the event (or command) during which it was registered, with no failure since
        that event began; `callback(exc)` when `exc` stopped the call (rule 5), or was the
        first failure collected meanwhile under "collect" (which event failed is not known).
        """
        after: list[AfterDrain] | None = getattr(self._local, "after", None)
        if after is None:
            return False
        after.append(callback)
        return True

    def _dispatch_one(
        self, event: object, index: int | None, failures: list[Exception] | None
    ) -> int:
        """The general path for one event: every registration claimed or dereferenced."""
        event_type = type(event)
        regs = self._plan(event_type)
        if not regs:
            if self._on_unhandled is not None:
                self._on_unhandled(event)
            return 0
        meter = self._meter
        rows = None if meter is None else meter.rows(event_type, regs, _Registration.live_handler)
        row: Row | None = None
        calls = 0
        for position, reg in enumerate(regs):
            handler = self._take(reg)
            if handler is None:
                continue
            calls += 1
            if rows is not None:
                row = rows[position]
            start = None if row is None else row.begin()
            try:
                result = handler(event)
                if result is not None and type(result) is CoroutineType:
                    _refuse_coroutine(handler, result)
            except Exception as exc:
                if row is not None:
                    row.end(start, failed=True)
                exc.add_note(failure_note(handler, event_type, index))
                if index is not None:
                    set_batch_index(exc, index)
                if self._raise:
                    raise
                failures = self._absorb(exc, event, handler, failures)
            except BaseException:
                if row is not None:
                    row.end(start, failed=False)
                raise
            else:
                if row is not None:
                    row.end(start, failed=False)
        return calls

    def _absorb(
        self,
        exc: Exception,
        event: object,
        handler: Callable[..., Any],
        failures: list[Exception] | None,
    ) -> list[Exception] | None:
        """Rule 8 for "collect" and a callback (called while `exc` is being handled): keep it
        in `failures` (made on the first one) or pass it to `on_error`; returns `failures`."""
        if self._collect:
            if failures is None:
                failures = []
            failures.append(exc)
        else:
            self._on_error(exc, event, handler)  # type: ignore[operator]
        return failures


Dispatcher.__doc__ = with_rules(Dispatcher.__doc__, __doc__)  # help() shows every rule


def _group(failures: list[Exception]) -> ExceptionGroup[Exception]:
    return ExceptionGroup(f"domainbus: {len(failures)} handler(s) failed", failures)

"""Commands on the reference `Dispatcher`: the specification of `execute` in code.

`domainbus.pure.Dispatcher` mixes in `Commands`; `domainbus.rust.Dispatcher` (rust/commands.rs)
must behave exactly like it, and the parity tests compare both. An event says what happened and
goes to every interested handler; a command asks for one thing to be done, by one handler,
whose result the caller gets back (MediatR's Send vs Publish, the cosmic-python bus).

1. **One handler per command type.** `register_command_handler(command_type, handler)` (or the
   `command_handler(command_type)` decorator) returns the handler. Registering the same
   handler (`==`) again changes nothing; a second, different handler for the same type is a
   `ValueError` naming both. `unregister_command_handler(command_type)` removes it (False if
   there was none); `command_handler_for(command_type)` returns it (or None); `clear()` removes
   every command handler too (dependencies and middleware stay).
2. **Routing is by exact type**: a subclass of a command does not reach its base's handler.
   `execute` of a command with no handler raises `domainbus.UnknownCommand` (a `LookupError`)
   naming its type, and the base class's handler when one exists. Executing a command class
   instead of an instance is a `TypeError`.
3. **`execute(command)` returns the handler's result.** Its exceptions always propagate (the
   same object, traceback kept), whatever `on_error` says (that stays the policy for events),
   with a PEP 678 note naming the user's handler and the command type. A handler that returns
   a coroutine is its `TypeError` (the coroutine is closed): use `execute_async`.
4. **`await execute_async(command)`**: the same, and an awaitable result is awaited.
5. **Events recorded while a command runs follow the dispatcher's `nested` mode.** A unit of
   work inside the handler commits, then dispatches the events of its aggregates and its own,
   first in first out (see `domainbus.uow`). With `nested="queue"` an outermost `execute` opens
   the same per-thread FIFO an outermost `dispatch` opens: every `dispatch` made while the
   command runs (the unit of work's, an event handler's, a nested command's) is appended to it,
   and it is drained after the handler returns, first in first out, each event's handlers in
   their order, with `on_error` applied as for any dispatch; then `execute` returns the
   handler's result. That is the cosmic-python bus order: the command, its events in recording
   order, then what their handlers caused, in the order it was caused. A nested `execute` (from
   an event handler, or from a command handler) runs its handler at once (its result is
   returned to its caller) and its events join the same FIFO. If the handler raises, the
   events it queued are not dispatched and a note says how many. A unit of work with an
   outbox settles its rows as delivered only once the FIFO has dispatched its events
   (`Dispatcher._after_drain`; see `domainbus.uow`). With `nested="immediate"` every dispatch
   runs at once, depth-first, as it does outside commands.
6. **Dependencies.** `provide(*by_type, **by_name)` gives values once at start-up. Every handler
   registered afterwards (command or event handler) has its parameters after the first
   resolved at registration: by name, else by annotation among the values provided by type,
   else its default; anything else is a `TypeError` then, naming the handler and the parameter.
   The values are bound once (a `functools.partial`), so a call passes them as keywords and
   nothing is looked up per call. Values are provided once: a name (or exact type) provided
   twice is a `ValueError`.
7. **Middleware.** `add_middleware(middleware)` wraps every command handler (registered before
   or after) in `middleware(command, call_next=...)`, which returns `call_next(command)` or
   anything it likes. The first middleware added is the outermost. With none, `execute` calls
   the handler directly. Middleware may declare dependencies as handlers do.
8. **Copy-on-write**: a change to the command table made while a command runs takes effect for
   the next `execute`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeVar

from domainbus._async import AfterDrain, drained
from domainbus._commands import (
    Dependencies,
    bind_event_handler,
    check_middleware,
    command_note,
    compose,
    coroutine_error,
    duplicate_handler,
    execute_async,
    unknown_command,
)

if TYPE_CHECKING:
    import threading

    from domainbus.pure.dispatcher import OnError

__all__ = ["Commands"]

H = TypeVar("H", bound=Callable[..., Any])
M = TypeVar("M", bound=Callable[..., Any])


class _Entry:
    """A command type's handler: as given, with its dependencies bound, and in its chain."""

    __slots__ = ("bound", "call", "command_type", "handler")

    def __init__(
        self, command_type: type, handler: Any, bound: Any, middleware: tuple[Any, ...]
    ) -> None:
        self.command_type = command_type
        self.handler = handler  # what the user registered: named in notes and errors
        self.bound = bound  # the handler with its dependencies
        self.call = compose(middleware, bound)  # what execute calls


def _check_command_type(command_type: object) -> type:
    if not isinstance(command_type, type):
        raise TypeError(f"command_type must be a class, not {type(command_type).__qualname__}")
    return command_type


class Commands:
    """The command half of the pure `Dispatcher` (rules in the module docstring).

    It uses the dispatcher's `_lock`, `_local` (the per-thread FIFO of "queue" mode), `_nested`,
    `_on_error` and `_dispatch_one`. Its own state starts as the class-level empty values below
    and is replaced whole on every change (copy-on-write), never mutated.
    """

    _lock: threading.RLock
    _local: threading.local
    _nested: str
    _on_error: OnError
    _command_table: dict[type, _Entry] = {}  # noqa: RUF012 (replaced, never mutated)
    _dependencies: Dependencies = Dependencies()
    _middleware: tuple[Callable[..., Any], ...] = ()

    def _dispatch_one(self, event: object, index: int | None, failures: Any) -> int:
        raise NotImplementedError  # provided by the Dispatcher

    # -- registry ---------------------------------------------------------------------------

    def register_command_handler(self, command_type: type, handler: H) -> H:
        """Make `handler` the one handler of commands of exactly `command_type`; returns it."""
        _check_command_type(command_type)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__qualname__}")
        with self._lock:
            existing = self._command_table.get(command_type)
            if existing is not None:
                if existing.handler == handler:
                    return handler
                raise duplicate_handler(command_type, existing.handler, handler)
            bound = self._dependencies.bind(handler, "command handler")
            entry = _Entry(command_type, handler, bound, self._middleware)
            self._command_table = {**self._command_table, command_type: entry}
        return handler

    def command_handler(self, command_type: type) -> Callable[[H], H]:
        """Decorator form of `register_command_handler`."""
        _check_command_type(command_type)

        def decorator(handler: H) -> H:
            return self.register_command_handler(command_type, handler)

        return decorator

    def unregister_command_handler(self, command_type: type) -> bool:
        """Remove the handler of `command_type`; False if it had none."""
        _check_command_type(command_type)
        with self._lock:
            if command_type not in self._command_table:
                return False
            table = dict(self._command_table)
            del table[command_type]
            self._command_table = table
        return True

    def command_handler_for(self, command_type: type) -> Callable[..., Any] | None:
        """The handler commands of exactly `command_type` go to, or None."""
        _check_command_type(command_type)
        entry = self._command_table.get(command_type)
        return None if entry is None else entry.handler

    def _clear_commands(self) -> None:
        with self._lock:
            self._command_table = {}

    # -- dependencies and middleware --------------------------------------------------------

    def provide(self, *by_type: object, **by_name: object) -> None:
        """Provide dependencies for the handlers registered from now on (rule 6)."""
        with self._lock:
            self._dependencies = self._dependencies.with_provided(by_type, by_name)

    def add_middleware(self, middleware: M) -> M:
        """Wrap every command handler in `middleware(command, call_next=...)`; returns it."""
        check_middleware(middleware)
        with self._lock:
            layer = self._dependencies.bind(middleware, "middleware", skip=("call_next",))
            chain = (*self._middleware, layer)
            self._middleware = chain
            self._command_table = {
                t: _Entry(t, e.handler, e.bound, chain) for t, e in self._command_table.items()
            }
        return middleware

    def _inject(self, handler: H, weak: bool) -> H:
        """An event handler with its dependencies bound (the hook of `register_handler`)."""
        return bind_event_handler(self._dependencies, handler, weak)  # type: ignore[return-value]

    # -- execute -----------------------------------------------------------------------------

    def execute(self, command: object, /) -> Any:
        """Run the handler of `command`'s exact type and return its result (rules 2, 3, 5)."""
        entry = self._command_table.get(type(command))
        if entry is None:
            raise unknown_command(command, self.command_handler_for)
        if self._nested == "queue" and getattr(self._local, "fifo", None) is None:
            return self._execute_outermost(entry, command)
        return _call(entry, command)

    def execute_async(self, command: object) -> Coroutine[Any, Any, Any]:
        """Awaitable `execute`: an awaitable result is awaited (rule 4)."""
        return execute_async(self, command)  # type: ignore[arg-type]

    def _command_route(self, command: object) -> tuple[Callable[..., Any], Any]:
        """(what to call, the user's handler) for `command`, or the error of rule 2."""
        entry = self._command_table.get(type(command))
        if entry is None:
            raise unknown_command(command, self.command_handler_for)
        return entry.call, entry.handler

    def _execute_outermost(self, entry: _Entry, command: object) -> Any:
        """Rule 5, "queue" mode: the handler runs with the FIFO open, then the FIFO drains."""
        fifo: deque[object] = deque()
        after: list[AfterDrain] = []
        self._local.fifo, self._local.after = fifo, after
        failures: list[Exception] | None = [] if self._on_error == "collect" else None
        try:
            result = _call(entry, command)
            while fifo:
                self._dispatch_one(fifo.popleft(), None, failures)
        except BaseException as exc:
            if fifo:
                exc.add_note(f"domainbus: {len(fifo)} queued event(s) were not dispatched")
            drained(after, exc)
            raise
        finally:
            self._local.fifo = self._local.after = None
        drained(after, failures[0] if failures else None)
        if failures:
            raise _collected(failures)
        return result


def _collected(failures: list[Exception]) -> ExceptionGroup[Exception]:
    """The group of "collect"; the list is emptied, so that the frames in its members'
    tracebacks (which refer to the list) form no cycle with them: freed without the GC."""
    group = ExceptionGroup(f"domainbus: {len(failures)} handler(s) failed", failures)
    failures.clear()
    return group


def _call(entry: _Entry, command: object) -> Any:
    try:
        result = entry.call(command)
        if type(result) is CoroutineType:
            result.close()
            raise coroutine_error(entry.handler)
    except Exception as exc:
        exc.add_note(command_note(entry.handler, type(command)))
        raise
    return result

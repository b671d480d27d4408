"""What both backends share for commands: dependencies, middleware chains, texts, async execute.

The rules are in `domainbus.pure.commands` (the specification); this module holds the parts the
Rust backend calls too, so that both build the same bound handlers, chains, errors and notes:

- `Dependencies`: the values an application provides once (`dispatcher.provide(...)`) and
  `bind`, which resolves a handler's extra parameters from them at registration time;
- `BoundHandler`: a handler with its dependencies bound (a `functools.partial`: no frame of
  this library appears in tracebacks; CPython 3.11 builds a keyword dict per call through it,
  which the Rust `execute` avoids by calling the handler itself with the values as kwnames);
- `compose`: a middleware chain around a command handler, nested partials as well;
- the messages of unknown commands, duplicate command handlers and the PEP 678 note;
- `execute_async`, the coroutine of `execute_async` (awaiting, and the FIFO of `nested="queue"`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from types import FunctionType
from typing import Any, Protocol

from domainbus._async import _FRAMES, Frame, _active_frame, _AsyncCapable, _Run, drained
from domainbus._notes import describe_handler
from domainbus.errors import UnknownCommand

__all__ = [
    "BoundHandler",
    "Dependencies",
    "bind",
    "bind_event_handler",
    "check_middleware",
    "command_note",
    "compose",
    "duplicate_handler",
    "execute_async",
    "unknown_command",
]

_EMPTY = inspect.Parameter.empty
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class BoundHandler(functools.partial):  # type: ignore[type-arg]
    """`handler` with its dependencies bound as keyword arguments.

    It carries the handler's `__qualname__`, `__module__` and `__wrapped__`, and compares equal
    (and hashes equal) to the handler itself, so `unregister_handler(event_type, handler)`, error
    notes and `handlers_for` all speak of the user's function.
    """

    def __new__(cls, handler: Callable[..., Any], /, **dependencies: Any) -> BoundHandler:
        self = super().__new__(cls, handler, **dependencies)
        for name in ("__qualname__", "__module__", "__name__", "__doc__"):
            value = getattr(handler, name, None)
            if value is not None:
                self.__dict__[name] = value
        self.__dict__["__wrapped__"] = handler
        return self

    def __eq__(self, other: object) -> bool:
        mine = self.func
        theirs = other.func if isinstance(other, BoundHandler) else other
        return bool(mine == theirs)

    def __hash__(self) -> int:
        return hash(self.func)

    def __repr__(self) -> str:
        names = ", ".join(self.keywords)
        return f"<{describe_handler(self.func)} with dependencies {names}>"


class Dependencies:
    """What the application provided: values by parameter name, and values matched by type.

    Immutable: `with_provided` returns a new instance (the dispatchers publish it whole).
    """

    __slots__ = ("by_name", "by_type")

    def __init__(
        self, by_name: Mapping[str, object] | None = None, by_type: tuple[object, ...] = ()
    ) -> None:
        self.by_name: dict[str, object] = dict(by_name or {})
        self.by_type = by_type

    def with_provided(
        self, by_type: tuple[object, ...], by_name: Mapping[str, object]
    ) -> Dependencies:
        """A copy with more values; providing a name or a value's exact type twice is an error."""
        for name in by_name:
            if name in self.by_name:
                raise ValueError(
                    f"a dependency named {name!r} is already provided; handlers registered "
                    "since are bound to it, so it cannot be replaced (use a new Dispatcher)"
                )
        known = [type(value) for value in self.by_type]
        for value in by_type:
            if isinstance(value, type):
                raise TypeError(
                    f"provide() needs instances to match by type, not the class "
                    f"{value.__qualname__} (provide it by name: provide(name={value.__qualname__}))"
                )
            if type(value) in known:
                raise ValueError(
                    f"a dependency of type {type(value).__qualname__} is already provided"
                )
            known.append(type(value))
        return Dependencies({**self.by_name, **by_name}, (*self.by_type, *by_type))

    def bind(
        self, handler: Callable[..., Any], role: str = "handler", *, skip: tuple[str, ...] = ()
    ) -> Callable[..., Any]:
        """`handler`, or a `BoundHandler` with the dependencies its extra parameters name.

        The first positional parameter receives the message (command or event). Every other
        parameter (except `*args`, `**kwargs` and the names in `skip`) is resolved, in order:
        1. a value provided under its name;
        2. else, if its annotation is a class, the one value provided by type that is an
           instance of it (two such values: an error, the choice would be a guess);
        3. else its default, if it has one;
        4. else it is an error now, at registration, naming the handler and the parameter.
        """
        if (
            not self.by_name
            and not self.by_type
            and (_needs_nothing(handler) or type(handler) is not FunctionType)
        ):
            # the common case, decided without inspect.signature; a callable object is not
            # inspected while nothing is provided (its `__eq__`/`__getattr__` would run here)
            return handler
        try:
            signature = inspect.signature(handler)
        except (TypeError, ValueError):  # builtins without a signature: nothing to resolve
            return handler
        params = list(signature.parameters.values())
        first = next(
            (i for i, p in enumerate(params) if p.kind != inspect.Parameter.KEYWORD_ONLY), None
        )
        if first is None or params[first].kind == inspect.Parameter.VAR_KEYWORD:
            return handler  # it cannot take the message positionally: the call will say so
        bound: dict[str, object] = {}
        hints: dict[str, Any] | None = None
        for param in params[first + 1 :]:
            if param.name in skip or param.kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                continue
            if param.name in self.by_name and param.kind in _KEYWORD_KINDS:
                bound[param.name] = self.by_name[param.name]
                continue
            annotation = param.annotation
            if self.by_type and annotation is not _EMPTY:
                if isinstance(annotation, str):
                    hints = _hints(handler) if hints is None else hints
                    annotation = hints.get(param.name, annotation)
                found = self._by_annotation(handler, role, param.name, annotation)
                if found is not None and param.kind in _KEYWORD_KINDS:
                    bound[param.name] = found[0]
                    continue
            if param.default is not _EMPTY:
                continue
            if isinstance(annotation, str):  # for the message only
                annotation = _hints(handler).get(param.name, annotation)
            raise TypeError(self._missing(handler, role, param, annotation))
        return BoundHandler(handler, **bound) if bound else handler

    def _by_annotation(
        self, handler: object, role: str, name: str, annotation: object
    ) -> tuple[object] | None:
        if not isinstance(annotation, type) or annotation is object:
            return None  # `object` matches everything: by name only
        try:
            matches = [value for value in self.by_type if isinstance(value, annotation)]
        except TypeError:  # a Protocol that is not runtime-checkable, say: by name only
            return None
        if len(matches) > 1:
            kinds = ", ".join(type(value).__qualname__ for value in matches)
            raise TypeError(
                f"{role} {describe_handler(handler)}: parameter {name!r} of type "
                f"{annotation.__qualname__} matches several provided dependencies ({kinds}); "
                f"provide it by name: provide({name}=...)"
            )
        return (matches[0],) if matches else None

    def _missing(
        self, handler: object, role: str, param: inspect.Parameter, annotation: object
    ) -> str:
        if param.kind == inspect.Parameter.POSITIONAL_ONLY:
            return (
                f"{role} {describe_handler(handler)}: positional-only parameter "
                f"{param.name!r} cannot be given a dependency (make it a keyword parameter)"
            )
        of_type = ""
        if isinstance(annotation, type) and annotation is not object:
            of_type = f" or of type {annotation.__qualname__}"
        return (
            f"{role} {describe_handler(handler)} needs parameter {param.name!r}, but no "
            f"dependency named {param.name!r}{of_type} was provided "
            f"(call dispatcher.provide({param.name}=...) before registering it)"
        )


def _needs_nothing(handler: object) -> bool:
    """True for a plain function whose parameters after the first all have defaults."""
    if type(handler) is not FunctionType:
        return False
    code = handler.__code__
    defaults = len(handler.__defaults__ or ())
    kw_defaults = len(handler.__kwdefaults__ or ())
    return code.co_argcount - defaults <= 1 and code.co_kwonlyargcount == kw_defaults


def _hints(handler: object) -> dict[str, Any]:
    """The handler's resolved annotations; {} when they cannot be resolved."""
    try:
        return typing.get_type_hints(handler)
    except Exception:  # a forward reference that does not resolve: match by name only
        return {}


_NOTHING = Dependencies()


def bind(
    dependencies: Dependencies | None,
    handler: Callable[..., Any],
    role: str = "handler",
    skip: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """`dependencies.bind(...)`, with None meaning nothing provided (how rust/commands.rs calls)."""
    return (dependencies or _NOTHING).bind(handler, role, skip=skip)


def bind_event_handler(
    dependencies: Dependencies | None, handler: Callable[..., Any], weak: bool
) -> Callable[..., Any]:
    """An event handler with its dependencies bound (the hook of `register_handler`)."""
    bound = bind(dependencies, handler)
    if bound is not handler and weak:
        raise TypeError(
            "weak=True handlers cannot take dependencies (the bound handler would be the "
            "only reference to hold): register it strongly"
        )
    return bound


# -- middleware -----------------------------------------------------------------------------


def check_middleware(middleware: object) -> None:
    """A middleware is called as `middleware(command, call_next=...)`; check it can be."""
    if not callable(middleware):
        raise TypeError(f"middleware must be callable, not {type(middleware).__qualname__}")
    try:
        params = inspect.signature(middleware).parameters
    except (TypeError, ValueError):
        return
    takes_keywords = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "call_next" not in params and not takes_keywords:
        raise TypeError(
            f"middleware {describe_handler(middleware)} must take the command and a "
            "keyword parameter named call_next: def middleware(command, call_next): ..."
        )


def compose(middleware: tuple[Callable[..., Any], ...], call: Callable[..., Any]) -> Any:
    """`call` wrapped in the chain: the first middleware added is the outermost."""
    for layer in reversed(middleware):
        call = functools.partial(layer, call_next=call)
    return call


# -- texts ------------------------------------------------------------------------------------


def command_note(handler: object, command_type: type) -> str:
    """The PEP 678 note added to every exception `execute` propagates."""
    name = describe_handler(handler)
    return f"domainbus: raised by command handler {name} for {command_type.__qualname__}"


def coroutine_error(handler: object) -> TypeError:
    return TypeError(
        f"command handler {describe_handler(handler)} returned a coroutine: "
        "async handlers need execute_async()"
    )


def duplicate_handler(command_type: type, existing: object, new: object) -> ValueError:
    return ValueError(
        f"command {command_type.__qualname__} already has a handler, "
        f"{describe_handler(existing)}; {describe_handler(new)} cannot be registered too "
        "(a command has exactly one handler: unregister_command_handler() first)"
    )


def unknown_command(
    command: object, handler_of: Callable[[type], object | None]
) -> UnknownCommand | TypeError:
    """The error of `execute(command)` when `type(command)` has no handler."""
    if isinstance(command, type) and handler_of(command) is not None:
        return TypeError(
            f"execute() needs a command instance, not the class {command.__qualname__}"
        )
    command_type = type(command)
    name = command_type.__qualname__
    for base in command_type.__mro__[1:]:
        handler = handler_of(base)
        if handler is not None:
            return UnknownCommand(
                command_type,
                f"no handler for command {name}: commands are routed by exact type, and the "
                f"handler of its base class {base.__qualname__} ({describe_handler(handler)}) "
                f"is not used for subclasses; register one for {name}",
            )
    return UnknownCommand(
        command_type,
        f"no handler for command {name} (register one with register_command_handler)",
    )


# -- async ------------------------------------------------------------------------------------


class _CommandCapable(_AsyncCapable, Protocol):
    def _command_route(self, command: object) -> tuple[Callable[..., Any], Any]: ...


async def _call(call: Callable[..., Any], handler: Any, command: object) -> Any:
    try:
        result = call(command)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        exc.add_note(command_note(handler, type(command)))
        raise
    return result


async def execute_async(dispatcher: _CommandCapable, command: object) -> Any:
    """Run the command's handler (its chain), awaiting an awaitable result; return the result.

    In `nested="queue"` mode an outermost `execute_async` opens the FIFO that `dispatch_async`
    calls made while it runs (a unit of work's, a handler's) append to, and drains it after the
    handler returns, first in first out, with the dispatcher's `on_error` for the events.
    """
    call, handler = dispatcher._command_route(command)
    if dispatcher.nested == "immediate" or _active_frame(dispatcher) is not None:
        return await _call(call, handler, command)
    frame = Frame()
    fifo = frame.fifo
    token = _FRAMES.set((*_FRAMES.get(), (dispatcher, frame)))
    run = _Run(dispatcher, False)
    try:
        result = await _call(call, handler, command)
        while fifo:
            await run.event(fifo.popleft(), None)
    except BaseException as exc:
        if fifo:
            exc.add_note(f"domainbus: {len(fifo)} queued event(s) were not dispatched")
        drained(frame.after, exc)
        raise
    finally:
        _FRAMES.reset(token)
    drained(frame.after, run.failures[0] if run.failures else None)
    if run.failures:
        raise ExceptionGroup(f"domainbus: {len(run.failures)} handler(s) failed", run.failures)
    return result

"""Parity for commands: random programs of command and event registrations, middleware,
dependencies, `execute` and `execute_async`, run on a pure and a Rust dispatcher built with
the same random options. Command handlers return values, raise, dispatch events, execute
nested commands and (un)register; event handlers log, raise, dispatch and execute commands.
After every step the call logs, return values and exceptions (type, message, notes, and the
members of exception groups) must be equal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domainbus import pure, rust


class Cmd:
    def __init__(self, n: int, depth: int = 0) -> None:
        self.n, self.depth = n, depth


class Place(Cmd):
    pass


class Cancel(Cmd):
    pass


class Rush(Place):  # a subclass: never reaches Place's handler
    pass


class Ev:
    def __init__(self, n: int, depth: int = 0) -> None:
        self.n, self.depth = n, depth


class Placed(Ev):
    pass


class Failed(Ev):
    pass


COMMANDS = [Place, Cancel, Rush]
EVENTS = [Placed, Failed]
COMMAND_KINDS = ["value", "raise", "dispatch", "nested", "register", "async", "deps"]
EVENT_KINDS = ["log", "fail", "dispatch", "execute"]


class Boom(Exception):
    pass


class Backend:
    """One dispatcher plus its handler pools and call log."""

    def __init__(self, module: Any, options: dict[str, Any]) -> None:
        self.log: list[tuple[Any, ...]] = []
        kwargs = dict(options)
        if kwargs.pop("callback", False):
            kwargs["on_error"] = self.on_error
        self.d = module.Dispatcher(**kwargs)
        self.provided = False
        self.commands = [self.command_handler(i) for i in range(len(COMMAND_KINDS))]
        self.events = [self.event_handler(i) for i in range(len(EVENT_KINDS))]

    def on_error(self, exc: Exception, event: Any, handler: Any) -> None:
        self.log.append(("on_error", type(exc).__name__, str(exc), handler.__qualname__))

    def command_handler(self, index: int) -> Callable[..., Any]:
        kind = COMMAND_KINDS[index]
        name = f"c{index}_{kind}"
        log, d = self.log, self.d

        def handler(command: Any) -> Any:
            log.append((name, type(command).__name__, command.n, command.depth))
            if kind == "raise":
                raise Boom(f"{name} failed on {command.n}")
            if kind == "dispatch":
                first = EVENTS[command.n % 2](command.n, command.depth)
                log.append((name, "dispatched", d.dispatch(first)))
                log.append((name, "dispatched", d.dispatch(Placed(command.n + 1, command.depth))))
            if kind == "nested" and command.depth < 2:
                inner = COMMANDS[(command.n + 1) % 2](command.n, command.depth + 1)
                log.append((name, "nested", d.execute(inner)))
            if kind == "register":
                d.register_handler(EVENTS[command.n % 2], self.events[0])
            return f"{name}:{command.n}"

        async def async_handler(command: Any) -> Any:
            log.append((name, type(command).__name__, command.n, command.depth))
            await asyncio.sleep(0)
            await d.dispatch_async(Placed(command.n, command.depth))
            if command.n % 3 == 2:
                raise Boom(f"{name} failed late")
            return command.n * 2

        def with_dependencies(command: Any, tally: list[int], scale: int = 1) -> Any:
            tally.append(command.n)
            log.append((name, type(command).__name__, command.n, len(tally), scale))
            return command.n * scale

        chosen: Any = {"async": async_handler, "deps": with_dependencies}.get(kind, handler)
        chosen.__qualname__ = name
        chosen.__module__ = "parity"
        return chosen  # type: ignore[no-any-return]

    def event_handler(self, index: int) -> Callable[[Any], Any]:
        kind = EVENT_KINDS[index]
        name = f"e{index}_{kind}"
        log, d = self.log, self.d

        def handler(event: Any) -> None:
            log.append((name, type(event).__name__, event.n, event.depth))
            if kind == "fail":
                raise Boom(f"{name} failed on {event.n}")
            if kind == "dispatch" and event.depth < 2:
                log.append((name, "dispatched", d.dispatch(Failed(event.n, event.depth + 1))))
            if kind == "execute" and event.depth < 1:
                try:
                    log.append((name, "executed", d.execute(Cancel(event.n, event.depth + 1))))
                except Exception as exc:
                    log.append((name, "execute failed", type(exc).__name__, str(exc)))

        handler.__qualname__ = name
        handler.__module__ = "parity"
        return handler

    def middleware(self, index: int) -> Callable[..., Any]:
        log = self.log

        def layer(command: Any, call_next: Any) -> Any:
            log.append((f"m{index}", "in", type(command).__name__))
            if index == 2 and command.n == 7:
                raise Boom("middleware refused 7")
            result = call_next(command)
            log.append((f"m{index}", "out", type(command).__name__))
            return result

        layer.__qualname__ = f"m{index}"
        layer.__module__ = "parity"
        return layer


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", call())
    except BaseException as exc:  # every exception is part of the comparison
        return describe(exc)


def describe(exc: BaseException) -> tuple[Any, ...]:
    members = (
        tuple(describe(e) for e in exc.exceptions) if isinstance(exc, BaseExceptionGroup) else ()
    )
    return ("raised", type(exc).__name__, str(exc), tuple(getattr(exc, "__notes__", ())), members)


class CommandParityMachine(RuleBasedStateMachine):
    backends: tuple[Backend, Backend]

    @initialize(
        nested=st.sampled_from(["immediate", "queue"]),
        on_error=st.sampled_from(["raise", "collect", "callback"]),
        initial=st.lists(
            st.tuples(st.sampled_from(EVENTS), st.integers(0, len(EVENT_KINDS) - 1)), max_size=4
        ),
    )
    def build(self, nested: str, on_error: str, initial: list[tuple[type, int]]) -> None:
        options: dict[str, Any] = {"nested": nested}
        if on_error == "callback":
            options["callback"] = True
        else:
            options["on_error"] = on_error
        self.backends = (Backend(pure, options), Backend(rust, options))
        for cls, index in initial:
            self.both(lambda b, cls=cls, i=index: b.d.register_handler(cls, b.events[i]) and None)

    def both(self, action: Callable[[Backend], Any]) -> None:
        results = [outcome(lambda b=b: action(b)) for b in self.backends]
        assert results[0] == results[1]
        assert self.backends[0].log == self.backends[1].log
        for b in self.backends:
            b.log.clear()

    @rule(cls=st.sampled_from(COMMANDS), index=st.integers(0, len(COMMAND_KINDS) - 1))
    def register_command(self, cls: type, index: int) -> None:
        self.both(lambda b: b.d.register_command_handler(cls, b.commands[index]).__qualname__)

    @rule(cls=st.sampled_from(COMMANDS))
    def unregister_command(self, cls: type) -> None:
        self.both(lambda b: b.d.unregister_command_handler(cls))

    @rule(cls=st.sampled_from(EVENTS), index=st.integers(0, len(EVENT_KINDS) - 1))
    def register_event_handler(self, cls: type, index: int) -> None:
        self.both(lambda b: b.d.register_handler(cls, b.events[index]).__qualname__)

    @rule(by_type=st.booleans())
    def provide(self, by_type: bool) -> None:
        def action(b: Backend) -> None:
            tally: list[int] = []
            b.d.provide(**({"scale": 3} if by_type else {}), tally=tally)

        self.both(action)

    @rule(index=st.integers(0, 2))
    def add_middleware(self, index: int) -> None:
        self.both(lambda b: b.d.add_middleware(b.middleware(index)).__qualname__)

    @rule(cls=st.sampled_from(COMMANDS), n=st.integers(0, 9))
    def execute(self, cls: type, n: int) -> None:
        self.both(lambda b: b.d.execute(cls(n)))

    @rule(cls=st.sampled_from(COMMANDS), n=st.integers(0, 9))
    def execute_async(self, cls: type, n: int) -> None:
        self.both(lambda b: asyncio.run(b.d.execute_async(cls(n))))

    @rule(cls=st.sampled_from(EVENTS), n=st.integers(0, 9))
    def dispatch(self, cls: type, n: int) -> None:
        self.both(lambda b: b.d.dispatch(cls(n)))

    @rule()
    def clear(self) -> None:
        self.both(lambda b: b.d.clear())

    @invariant()
    def same_tables(self) -> None:
        for cls in COMMANDS:
            self.both(
                lambda b, cls=cls: getattr(b.d.command_handler_for(cls), "__qualname__", None)
            )
        for cls in EVENTS:
            self.both(lambda b, cls=cls: tuple(h.__qualname__ for h in b.d.handlers_for(cls)))


CommandParityMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCommandParity = CommandParityMachine.TestCase

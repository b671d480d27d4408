"""Parity: random programs run on both backends side by side must behave identically.

A Hypothesis state machine registers, unregisters, dispatches (single and batch, synchronous and
async, sequential and concurrent), clears, drops weakly held handlers, switches metrics on and
off, and inspects `handlers_for` and the metrics' calls and failures, on a pure and a Rust
dispatcher built with the same random options. Handlers log, raise, dispatch nested events,
(un)register other handlers, and some are `async def` (awaited by async dispatch, a TypeError in
sync dispatch). After every step the call logs, return values and
exceptions (type, message, notes, and the members of exception groups) must be equal.

Odd cases are generated too (issue 10): handlers that are callable objects whose `__eq__`
registers another handler or whose `__getattr__` raises, handlers returning odd awaitables
(`__await__ = None`, an ABC-registered class, `__await__` returning a non-iterator or an
iterator), events whose metaclass has its own `__mro__` or an `__eq__`/`__hash__` making all its
classes equal, and an `on_error` callable equal to everything.
"""

from __future__ import annotations

import asyncio
import collections.abc
import gc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domainbus import pure, rust


class A:
    def __init__(self, n: int, depth: int = 0) -> None:
        self.n, self.depth = n, depth


class B(A):
    pass


class C(B):
    pass


class D(A):
    pass


class E:  # outside the hierarchy
    def __init__(self, n: int, depth: int = 0) -> None:
        self.n, self.depth = n, depth


class ListMro(type):
    """A metaclass whose own `__mro__` attribute lies: routing uses the real MRO."""

    @property
    def __mro__(cls) -> list[type]:  # type: ignore[override]
        return [cls, object]


class AllEqual(type):
    """A metaclass making all its classes equal, with one hash: routing goes by identity."""

    def __eq__(cls, other: object) -> bool:
        return isinstance(other, AllEqual)

    def __hash__(cls) -> int:
        return 7


class F(C, metaclass=ListMro):
    pass


class G(D, metaclass=AllEqual):
    pass


class H(A, metaclass=AllEqual):
    pass


class AwaitNone:
    __await__ = None


class RegisteredAwaitable:
    pass


collections.abc.Awaitable.register(RegisteredAwaitable)


class AwaitsNonIterator:
    def __await__(self) -> Any:
        return 42


class AwaitsIterator:
    def __await__(self) -> Any:
        return iter([None])


ODD_AWAITABLES = [AwaitNone, RegisteredAwaitable, AwaitsNonIterator, AwaitsIterator]

CLASSES = [A, B, C, D, E, F, G, H, object]
EVENT_CLASSES = [A, B, C, D, E, F, G, H]
KINDS = [
    "log", "log", "log", "fail", "nested", "nested_fail", "register", "unregister", "async",
    "interrupt", "eq_registers", "no_attributes", "odd_awaitable",
]  # fmt: skip
POOL_SIZE = len(KINDS)


class Boom(Exception):
    pass


def name_of(handler: Any) -> str:
    """A handler's `__qualname__`, or its repr when that cannot be read."""
    try:
        return str(handler.__qualname__)
    except Exception:
        return repr(handler)


class EqRegisters:
    """A callable handler whose `__eq__` registers another handler (once at a time)."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend, self.__qualname__, self.__module__ = backend, name, "parity"
        self.comparing = False

    def __call__(self, event: Any) -> None:
        self.backend.log.append((self.__qualname__, type(event).__name__, event.n, event.depth))

    def __eq__(self, other: object) -> bool:
        b = self.backend
        b.log.append((self.__qualname__, "eq", name_of(other)))
        if not self.comparing:
            self.comparing = True
            try:
                target = CLASSES[len(b.log) % len(CLASSES)]
                b.d.register_handler(target, b.pool[len(b.log) % 3])
            finally:
                self.comparing = False
        return self is other

    __hash__ = object.__hash__


class NoAttributes:
    """A callable handler whose `__getattr__` raises: its own error must survive."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend, self.name = backend, name

    def __call__(self, event: Any) -> None:
        self.backend.log.append((self.name, type(event).__name__, event.n, event.depth))
        raise Boom(f"{self.name} failed on {event.n}")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")

    def __repr__(self) -> str:
        return f"<{self.name}>"


class EqualsAll:
    """An on_error callable equal to everything (even to "raise")."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __call__(self, exc: Exception, event: Any, handler: Any) -> None:
        self.backend.on_error(exc, event, handler)

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class Backend:
    """One dispatcher plus its own handler pool, call log and hooks."""

    def __init__(self, module: Any, options: dict[str, Any]) -> None:
        self.log: list[tuple[Any, ...]] = []
        kwargs = dict(options)
        callback = kwargs.pop("callback", False)
        if callback == "equals_all":
            kwargs["on_error"] = EqualsAll(self)
        elif callback:
            kwargs["on_error"] = self.on_error
        if kwargs.pop("unhandled", False):
            kwargs["on_unhandled"] = self.on_unhandled
        self.d = module.Dispatcher(**kwargs)
        self.pool = [self.make_handler(i) for i in range(POOL_SIZE)]

    def on_error(self, exc: Exception, event: Any, handler: Any) -> None:
        self.log.append(("on_error", type(exc).__name__, str(exc), name_of(handler), event.n))

    def on_unhandled(self, event: Any) -> None:
        self.log.append(("unhandled", type(event).__name__, getattr(event, "n", None)))

    def make_handler(self, index: int) -> Callable[[Any], Any]:
        kind = KINDS[index]
        name = f"h{index}_{kind}"
        if kind == "eq_registers":
            return EqRegisters(self, name)
        if kind == "no_attributes":
            return NoAttributes(self, name)

        async def async_handler(event: Any) -> None:
            self.log.append((name, type(event).__name__, event.n, event.depth))
            await asyncio.sleep(0)
            if event.depth < 2:
                inner = EVENT_CLASSES[(event.n * 3 + event.depth) % len(EVENT_CLASSES)]
                count = await self.d.dispatch_async(inner(event.n, event.depth + 1))
                self.log.append((name, "nested-async-returned", count))
            if event.n % 5 == 4:
                raise Boom(f"{name} failed on {event.n}")

        def handler(event: Any) -> None:
            self.log.append((name, type(event).__name__, event.n, event.depth))
            if kind == "fail":
                raise Boom(f"{name} failed on {event.n}")
            if kind == "interrupt" and event.n == 13:
                raise KeyboardInterrupt
            if kind in ("nested", "nested_fail") and event.depth < 2:
                inner = EVENT_CLASSES[(event.n + event.depth) % len(EVENT_CLASSES)]
                self.log.append(
                    (name, "nested-returned", self.d.dispatch(inner(event.n, event.depth + 1)))
                )
            if kind == "nested_fail":
                raise Boom(f"{name} failed after dispatching")
            if kind == "register":
                self.d.register_handler(CLASSES[event.n % len(CLASSES)], self.pool[event.n % 3])
            if kind == "unregister":
                removed = self.d.unregister_handler(CLASSES[event.n % len(CLASSES)], self.pool[0])
                self.log.append((name, "unregistered", removed))

        def odd_awaitable(event: Any) -> Any:
            self.log.append((name, type(event).__name__, event.n, event.depth))
            return ODD_AWAITABLES[event.n % len(ODD_AWAITABLES)]()

        chosen = {"async": async_handler, "odd_awaitable": odd_awaitable}.get(kind, handler)
        chosen.__qualname__ = name
        chosen.__module__ = "parity"
        return chosen


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


class ParityMachine(RuleBasedStateMachine):
    backends: tuple[Backend, Backend]

    @initialize(
        nested=st.sampled_from(["immediate", "queue"]),
        on_error=st.sampled_from(["raise", "collect", "callback", "equals_all"]),
        unhandled=st.booleans(),
        metrics=st.booleans(),
        initial=st.lists(
            st.tuples(st.sampled_from(CLASSES), st.integers(0, POOL_SIZE - 1), st.integers(-2, 2)),
            min_size=3,
            max_size=10,
        ),
    )
    def build(
        self,
        nested: str,
        on_error: str,
        unhandled: bool,
        metrics: bool,
        initial: list[tuple[type, int, int]],
    ) -> None:
        options: dict[str, Any] = {"nested": nested, "unhandled": unhandled, "metrics": metrics}
        if on_error == "callback":
            options["callback"] = True
        elif on_error == "equals_all":
            options["callback"] = "equals_all"
        else:
            options["on_error"] = on_error
        self.backends = (Backend(pure, options), Backend(rust, options))
        for cls, index, priority in initial:
            self.both(
                lambda b, cls=cls, i=index, p=priority: (
                    b.d.register_handler(cls, b.pool[i], priority=p) is b.pool[i]
                )
            )

    def both(self, action: Callable[[Backend], Any]) -> None:
        results = [outcome(lambda b=b: action(b)) for b in self.backends]
        assert results[0] == results[1]
        assert self.backends[0].log == self.backends[1].log
        for b in self.backends:
            b.log.clear()

    @rule(
        cls=st.sampled_from(CLASSES),
        index=st.integers(0, POOL_SIZE - 1),
        priority=st.integers(-2, 2),
        once=st.booleans(),
        weak=st.booleans(),
    )
    def register(self, cls: type, index: int, priority: int, once: bool, weak: bool) -> None:
        self.both(
            lambda b: (
                b.d.register_handler(cls, b.pool[index], priority=priority, once=once, weak=weak)
                is b.pool[index]
            )
        )

    @rule(cls=st.sampled_from(CLASSES), index=st.integers(0, POOL_SIZE - 1))
    def unregister(self, cls: type, index: int) -> None:
        self.both(lambda b: b.d.unregister_handler(cls, b.pool[index]))

    @rule(cls=st.sampled_from(EVENT_CLASSES), n=st.integers(0, 20))
    def dispatch(self, cls: type, n: int) -> None:
        self.both(lambda b: b.d.dispatch(cls(n)))

    @rule(
        events=st.lists(st.tuples(st.sampled_from(EVENT_CLASSES), st.integers(0, 20)), max_size=6)
    )
    def dispatch_batch(self, events: list[tuple[type, int]]) -> None:
        self.both(lambda b: b.d.dispatch_batch(cls(n) for cls, n in events))

    @rule(cls=st.sampled_from(EVENT_CLASSES), n=st.integers(0, 20), concurrent=st.booleans())
    def dispatch_async(self, cls: type, n: int, concurrent: bool) -> None:
        self.both(lambda b: asyncio.run(b.d.dispatch_async(cls(n), concurrent=concurrent)))

    @rule(
        events=st.lists(st.tuples(st.sampled_from(EVENT_CLASSES), st.integers(0, 20)), max_size=4),
        concurrent=st.booleans(),
    )
    def dispatch_batch_async(self, events: list[tuple[type, int]], concurrent: bool) -> None:
        batch = [(cls, n) for cls, n in events]
        self.both(
            lambda b: asyncio.run(
                b.d.dispatch_batch_async((cls(n) for cls, n in batch), concurrent=concurrent)
            )
        )

    @rule(index=st.integers(0, POOL_SIZE - 1))
    def replace_pool_entry(self, index: int) -> None:
        """Drop the pool's strong reference: weak registrations of the old handler vanish."""
        for b in self.backends:
            b.pool[index] = b.make_handler(index)
        gc.collect()

    @rule()
    def clear(self) -> None:
        self.both(lambda b: b.d.clear())

    @rule(action=st.sampled_from(["enable_metrics", "disable_metrics", "reset_metrics"]))
    def switch_metrics(self, action: str) -> None:
        self.both(lambda b: (getattr(b.d, action)(), b.d.metrics_enabled))

    @invariant()
    def same_metrics(self) -> None:
        """Rule 16: the same calls and failures per row (times differ, they are not compared)."""
        self.both(
            lambda b: sorted(
                (r["event_type"], r["handler"], r["calls"], r["failures"]) for r in b.d.metrics()
            )
        )

    @invariant()
    def same_handlers(self) -> None:
        for cls in CLASSES:
            self.both(lambda b, cls=cls: tuple(name_of(h) for h in b.d.handlers_for(cls)))


ParityMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestParity = ParityMachine.TestCase

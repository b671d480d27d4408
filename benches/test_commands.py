"""Issue 16's benchmark: `execute(command)` against calling the handler directly, lato's
`Application.execute` and a hand-written cosmic-python message bus, side by side in one run.

Two workloads, each a Python loop over prebuilt commands (what a web endpoint does, one command
at a time): a handler with no dependency, and a handler with one dependency (provided once to
the dispatcher; passed by hand in the direct call; injected with a lambda in the cosmic bus, as
the book's bootstrap does; resolved by lato's dependency provider). Every variant is checked to
make one handler call per command before it is timed. Target: Rust `execute` within 1.5x of the
direct call; the "C floor" line (`operator.call(handler, command)`) is what any `execute`
written in C costs at least. The ratios are printed by the last test (`test_ratios`), which
times every variant in turn, round after round, so that a busy machine slows them all alike.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import call
from typing import Any

import pytest

from domainbus import pure, rust


@dataclass(frozen=True)
class Allocate:
    n: int


def make_commands(count: int) -> list[Allocate]:
    return [Allocate(i) for i in range(count)]


class Counter:
    def __init__(self) -> None:
        self.calls = 0


def plain_handler(counter: Counter) -> Callable[[Any], int]:
    def allocate(command: Any) -> int:
        counter.calls += 1
        return command.n  # type: ignore[no-any-return]

    return allocate


def dependent_handler(command: Any, counter: Counter) -> int:
    counter.calls += 1
    return command.n  # type: ignore[no-any-return]


Build = Callable[[list[Any], bool], tuple[Callable[[], None], Counter]]


def direct(commands: list[Any], with_dependency: bool) -> tuple[Callable[[], None], Counter]:
    counter = Counter()
    if with_dependency:

        def run() -> None:
            for command in commands:
                dependent_handler(command, counter)

    else:
        handler = plain_handler(counter)

        def run() -> None:
            for command in commands:
                handler(command)

    return run, counter


def c_floor(commands: list[Any], with_dependency: bool) -> tuple[Callable[[], None], Counter]:
    """The handler called through `operator.call`: a C function that does nothing but call it.
    Any `execute` written in C pays this much (a call into C, then a call from C into Python,
    which CPython does not inline as it inlines a Python-to-Python call)."""
    counter = Counter()
    if with_dependency:

        def run() -> None:
            for command in commands:
                call(dependent_handler, command, counter=counter)

    else:
        handler = plain_handler(counter)

        def run() -> None:
            for command in commands:
                call(handler, command)

    return run, counter


def domainbus_variant(module: Any) -> Build:
    def build(commands: list[Any], with_dependency: bool) -> tuple[Callable[[], None], Counter]:
        counter = Counter()
        d = module.Dispatcher()
        if with_dependency:
            d.provide(counter=counter)
            d.register_command_handler(Allocate, dependent_handler)
        else:
            d.register_command_handler(Allocate, plain_handler(counter))
        execute = d.execute

        def run() -> None:
            for command in commands:
                execute(command)

        return run, counter

    return build


class CosmicBus:
    """The book's MessageBus (chapter 13), its logging and the isinstance dispatch kept."""

    def __init__(self, uow: Any, command_handlers: dict[type, Callable[..., Any]]) -> None:
        self.uow = uow
        self.command_handlers = command_handlers
        self.queue: list[Any] = []

    def handle(self, message: Any) -> None:
        self.queue = [message]
        while self.queue:
            message = self.queue.pop(0)
            if isinstance(message, Allocate):
                self.handle_command(message)
            else:
                raise Exception(f"{message} was not an Event or Command")

    def handle_command(self, command: Any) -> None:
        try:
            handler = self.command_handlers[type(command)]
            handler(command)
            self.queue.extend(self.uow.collect_new_events())
        except Exception:
            raise


class NoEventsUnitOfWork:
    def collect_new_events(self) -> Any:
        yield from ()


def inject_dependencies(handler: Callable[..., Any], dependencies: dict[str, Any]) -> Any:
    """The book's bootstrap.inject_dependencies."""
    params = inspect.signature(handler).parameters
    deps = {name: dep for name, dep in dependencies.items() if name in params}
    return lambda message: handler(message, **deps)


def cosmic(commands: list[Any], with_dependency: bool) -> tuple[Callable[[], None], Counter]:
    counter = Counter()
    handler = dependent_handler if with_dependency else plain_handler(counter)
    bus = CosmicBus(
        NoEventsUnitOfWork(), {Allocate: inject_dependencies(handler, {"counter": counter})}
    )

    def run() -> None:
        for command in commands:
            bus.handle(command)

    return run, counter


def lato_variant(commands: list[Any], with_dependency: bool) -> tuple[Callable[[], None], Counter]:
    lato = pytest.importorskip("lato")

    class LatoAllocate(lato.Command):  # type: ignore[misc, name-defined]
        n: int

    counter = Counter()
    app = lato.Application("bench", counter=counter)
    if with_dependency:

        @app.handler(LatoAllocate)  # type: ignore[misc]
        def allocate(command: LatoAllocate, counter: Counter) -> int:
            counter.calls += 1
            return command.n

    else:
        app.handler(LatoAllocate)(plain_handler(counter))
    lato_commands = [LatoAllocate(n=c.n) for c in commands]

    def run() -> None:
        for command in lato_commands:
            app.execute(command)

    return run, counter


VARIANTS: dict[str, Build] = {
    "direct": direct,
    "C floor": c_floor,
    "rust": domainbus_variant(rust),
    "pure": domainbus_variant(pure),
    "cosmic-bus": cosmic,
    "lato": lato_variant,
}
WORKLOADS = {"plain": False, "1 dependency": True}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_execute(benchmark: Any, bench_events: int, variant: str, workload: str) -> None:
    # lato runs a transaction context per command (~100x slower): fewer commands for it
    count = min(bench_events, 5_000 if variant == "lato" else 100_000)
    commands = make_commands(count)
    run, counter = VARIANTS[variant](commands, WORKLOADS[workload])
    run()
    assert counter.calls == count, f"{variant} made {counter.calls} calls, expected {count}"
    benchmark.group = f"commands: execute, {workload}"
    benchmark(run)


def test_ratios(capsys: pytest.CaptureFixture[str], bench_events: int) -> None:
    """Every variant timed in turn, round after round (so a busy machine slows all of them
    alike); print each one's median ns per command and its ratio to the direct call."""
    rounds = 5 if bench_events <= 2_000 else 21
    lines = []
    for workload, with_dependency in WORKLOADS.items():
        runs = {}
        for variant, build in VARIANTS.items():
            count = 200 if variant == "lato" else 5_000
            try:
                run, counter = build(make_commands(count), with_dependency)
            except pytest.skip.Exception:
                continue
            run()
            assert counter.calls == count
            runs[variant] = (run, count)
        times: dict[str, list[float]] = {variant: [] for variant in runs}
        for _ in range(rounds):
            for variant, (run, count) in runs.items():
                start = time.perf_counter_ns()
                run()
                times[variant].append((time.perf_counter_ns() - start) / count)
        medians = {variant: statistics.median(t) for variant, t in times.items()}
        floor = medians["direct"]
        for variant, median in medians.items():
            lines.append(
                f"{workload:>13} {variant:>10}: {median:8.1f} ns/command, "
                f"{median / floor:6.2f}x direct"
            )
        ratio = medians["rust"] / floor
        verdict = "met" if ratio <= 1.5 else "MISSED"
        lines.append(f"{workload:>13} rust execute / direct: {ratio:.2f} (<= 1.5) {verdict}")
        lines.append(
            f"{workload:>13} rust execute / C floor: {medians['rust'] / medians['C floor']:.2f}"
            f" (the C floor is {medians['C floor'] / floor:.2f}x direct)"
        )
    with capsys.disabled():
        print(f"\ndomainbus commands (interleaved, median of {rounds} rounds, this run)")
        for line in lines:
            print(line)

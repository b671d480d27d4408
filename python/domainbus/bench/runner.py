"""Run workloads on systems: check the handler calls first, then time interleaved rounds.

For each workload every runnable system is first run once with counting handlers; a system
whose calls differ from the expected ones is reported as failed and not timed. The others are
wired with no-op handlers, warmed up once, then timed round by round, each round running every
system once in turn, so that noise on a shared machine falls on all of them alike. The garbage
collector is paused during a timed run, as `timeit` does, and the workload's events are frozen
out of its collections (`gc.freeze`) while the workload runs.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import msgspec

from domainbus.bench.drivers import Run, drive
from domainbus.bench.handlers import Tally, counting_handlers, noop_handlers
from domainbus.bench.systems import NotApplicable, System
from domainbus.bench.workloads import Workload

__all__ = ["Outcome", "check", "measure", "prepared", "skip_reason", "time_run"]

Status = Literal["ok", "skipped", "failed"]


class Outcome(msgspec.Struct, kw_only=True):
    """One system on one workload: timed (`ok`, with ns/event of each round), `skipped` or
    `failed` (its handler calls were wrong), with the reason."""

    workload: str
    system: str
    status: Status
    reason: str = ""
    events: int = 0
    round_ns: list[float] = msgspec.field(default_factory=list)  # ns per event, each round


def skip_reason(workload: Workload, system: System) -> str | None:
    """Why `system` is not run on `workload` (known before running anything), or None."""
    return workload.unavailable() or system.missing() or workload.incompatibility(system)


@contextlib.contextmanager
def prepared(
    workload: Workload, system: System, events: Sequence[Any], handlers: Sequence[Any]
) -> Iterator[Run]:
    """`system` wired with `handlers` in `workload`'s slots, as a callable publishing `events`.

    Raises NotApplicable when the system cannot express the workload.
    """
    with (
        system.connect(workload.wiring(handlers)) as bus,
        drive(workload.mode, bus, events, workload.event_types) as run,
    ):
        yield run


def check(workload: Workload, system: System, events: Sequence[Any]) -> str | None:
    """Run `events` once with counting handlers; None when every call was the expected one,
    otherwise a description of the first difference."""
    tally = Tally()
    handlers = counting_handlers(workload.slots, tally, is_async=workload.is_async)
    with prepared(workload, system, events, handlers) as run:
        run()
    expected = workload.expected_calls(events)
    if tally == expected:
        return None
    for key in sorted(expected.keys() | tally.keys()):
        if tally[key] != expected[key]:
            slot, name = key
            return (
                f"wrong handler calls: {sum(tally.values())} made, {sum(expected.values())}"
                f" expected (handler {slot} on {name}: {tally[key]} instead of {expected[key]})"
            )
    raise AssertionError("unreachable: the tallies differ")


def time_run(run: Run) -> int:
    """Nanoseconds one call of `run` takes, with the garbage collector paused."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run()
        return time.perf_counter_ns() - start
    finally:
        if was_enabled:
            gc.enable()


Progress = Callable[[str, int, int], None]  # (what starts now, steps done, steps in all)


def measure(
    workloads: Sequence[Workload],
    systems: Sequence[System],
    *,
    events: int,
    rounds: int,
    progress: Progress = lambda label, done, total: None,
) -> list[Outcome]:
    """Every system on every workload; `progress` is called as each step (a check or a timed
    round of one system) starts."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    if events < 1:
        raise ValueError(f"events must be at least 1, not {events}")
    runnable = sum(
        skip_reason(workload, system) is None for workload in workloads for system in systems
    )
    counter = _Steps(progress, total=runnable * (1 + rounds))
    outcomes: list[Outcome] = []
    for workload in workloads:
        outcomes.extend(_measure_workload(workload, systems, events, rounds, counter))
    return outcomes


class _Steps:
    """Counts steps for the progress callback."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def __call__(self, label: str, steps: int = 1) -> None:
        self.progress(label, self.done, self.total)
        self.done += steps


def _not_timed(
    workload: Workload, system: System, reason: str, status: Status = "skipped"
) -> Outcome:
    return Outcome(workload=workload.name, system=system.name, status=status, reason=reason)


def _measure_workload(
    workload: Workload, systems: Sequence[System], count: int, rounds: int, progress: _Steps
) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    runnable: list[System] = []
    for system in systems:
        reason = skip_reason(workload, system)
        if reason is not None:
            outcomes[system.name] = _not_timed(workload, system, reason)
        else:
            runnable.append(system)
    if not runnable:
        return list(outcomes.values())

    progress(f"{workload.name}: building {count:,} events", 0)
    events = workload.build_events(count)
    with _frozen_heap():
        _run_systems(workload, runnable, events, rounds, progress, outcomes)
    return [outcomes[system.name] for system in systems]


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Collect once, then keep the objects alive now (the events) out of later collections,
    so that no collection in the runs has to walk a heap of events."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_systems(
    workload: Workload,
    runnable: Sequence[System],
    events: Sequence[Any],
    rounds: int,
    progress: _Steps,
    outcomes: dict[str, Outcome],
) -> None:
    """Check each system, then time the ones that passed; record every outcome."""
    count = len(events)
    timed: list[System] = []
    for system in runnable:
        progress(f"{workload.name}: checking {system.name}")
        try:
            failure = check(workload, system, events)
        except NotApplicable as exc:
            outcomes[system.name] = _not_timed(workload, system, str(exc))
        except Exception as exc:  # a broken system is reported, and the others still run
            outcomes[system.name] = _not_timed(workload, system, f"raised {exc!r}", "failed")
        else:
            if failure is None:
                timed.append(system)
                continue
            outcomes[system.name] = _not_timed(workload, system, failure, "failed")
        progress.done += rounds  # the rounds of a system that is not timed

    with contextlib.ExitStack() as stack:
        runs = []
        for system in timed:
            handlers = noop_handlers(workload.slots, is_async=workload.is_async)
            run = stack.enter_context(prepared(workload, system, events, handlers))
            run()  # warm-up: resolution caches, first-call paths
            runs.append((system, run))
        per_round: dict[str, list[float]] = {system.name: [] for system in timed}
        for round_no in range(1, rounds + 1):
            for system, run in runs:
                progress(f"{workload.name}: {system.name}, round {round_no}/{rounds}")
                per_round[system.name].append(time_run(run) / count)
    for system in timed:
        outcomes[system.name] = Outcome(
            workload=workload.name,
            system=system.name,
            status="ok",
            events=count,
            round_ns=per_round[system.name],
        )

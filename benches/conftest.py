"""Shared set-up of the pytest-benchmark suite: event counts, cached events, and the ratios.

`--bench-events N` sets the events per workload: 200,000 by default, 2,000 under
`--benchmark-disable` (a quick run, for CI, that still checks every system's handler calls).
Benchmarks record their median under a key in the `ledger`; after the run the terminal summary
prints the core ratios of issue 2 against their targets (ratios within one run, since this
machine is shared and absolute times drift).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from domainbus.bench.workloads import WORKLOADS, Workload

DEFAULT_EVENTS = 200_000
DISABLED_EVENTS = 2_000  # with --benchmark-disable: enough to check every path, in seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-events",
        type=int,
        default=None,
        help=f"events per benchmark workload (default {DEFAULT_EVENTS:,}; "
        f"{DISABLED_EVENTS:,} with --benchmark-disable)",
    )


@pytest.fixture(scope="session")
def bench_events(request: pytest.FixtureRequest) -> int:
    """Events per workload."""
    count: int | None = request.config.getoption("--bench-events")
    if count is None:
        disabled = request.config.getoption("benchmark_disable", default=False)
        count = DISABLED_EVENTS if disabled else DEFAULT_EVENTS
    if count < 1:
        raise pytest.UsageError(f"--bench-events must be at least 1, not {count}")
    return count


@functools.lru_cache(maxsize=2)  # tests are ordered by workload; keep memory bounded
def _events(name: str, count: int) -> list[Any]:
    """The events, built once and frozen out of the garbage collector (`gc.freeze`), so that a
    collection during a benchmark does not walk hundreds of thousands of events."""
    workload = next(w for w in WORKLOADS if w.name == name)
    events = workload.build_events(count)
    gc.collect()
    gc.freeze()
    return events


@pytest.fixture(scope="session")
def events_of(bench_events: int) -> Callable[[Workload], list[Any]]:
    """The (cached) events of a workload, `--bench-events` of them."""
    return lambda workload: _events(workload.name, bench_events)


@dataclass(frozen=True)
class Target:
    """`numerator / denominator` of two recorded medians, and the bound it should meet."""

    label: str
    numerator: str
    denominator: str
    bound: float
    at_most: bool  # True: ratio <= bound is the goal; False: ratio >= bound


TARGETS = (
    Target("rust dispatch_batch / floor, 1 handler", "1h:rust-batch", "1h:floor", 1.3, True),
    Target("rust dispatch_batch / floor, 3 handlers", "3h:rust-batch", "3h:floor", 1.15, True),
    Target("article / rust dispatch_batch, 1 handler", "1h:article", "1h:rust-batch", 4.0, False),
    Target(
        "rust dispatch loop / pure dispatch loop, 1 handler",
        "1h:rust-loop",
        "1h:pure-loop",
        1.0,
        True,
    ),
    Target(
        "rust dispatch loop / pure dispatch loop, 3 handlers",
        "3h:rust-loop",
        "3h:pure-loop",
        1.0,
        True,
    ),
    Target("UserRegistered() / uuid.uuid4()", "build:event", "build:uuid4", 0.25, True),
    Target(
        "rust dispatch_batch_async / hand-written await loop",
        "async:rust",
        "async:hand-loop",
        1.3,
        True,
    ),
    *(
        Target(
            f"{backend} dispatch_batch metrics {state} / off, {n} handler{'s' if n > 1 else ''}",
            f"metrics:{n}h:{backend}-{state}",
            f"metrics:{n}h:{backend}-off",
            1.3 if state == "on" else 1.05,
            True,
        )
        for backend in ("rust", "pure")
        for n in (1, 3)
        for state in ("on", "toggled")
    ),
)


class Ledger:
    """Medians (seconds per unit of work: an event, or one build) by key, for the ratios."""

    def __init__(self) -> None:
        self.medians: dict[str, float] = {}

    def record(self, key: str, benchmark: Any, units: int = 1) -> None:
        """Keep `benchmark`'s median divided by `units`; nothing when benchmarks are disabled."""
        stats = getattr(benchmark, "stats", None)
        if stats is None or not stats:
            return
        per_unit = stats.stats.median / units
        benchmark.extra_info["ns_per_unit"] = per_unit * 1e9
        self.medians[key] = per_unit

    def lines(self) -> list[str]:
        """One line per target whose two sides were both measured."""
        lines = []
        for target in TARGETS:
            top = self.medians.get(target.numerator)
            bottom = self.medians.get(target.denominator)
            if top is None or bottom is None:
                continue
            ratio = top / bottom
            met = ratio <= target.bound if target.at_most else ratio >= target.bound
            sign = "<=" if target.at_most else ">="
            verdict = "met" if met else f"MISSED by {abs(ratio / target.bound - 1):.0%}"
            lines.append(f"{target.label}: {ratio:.3f} (target {sign} {target.bound}) {verdict}")
        return lines


_LEDGER = Ledger()


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    """Where benchmarks record the medians the core ratios are computed from."""
    return _LEDGER


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = _LEDGER.lines()
    if lines:
        terminalreporter.section("domainbus core ratios (medians, this run)")
        for line in lines:
            terminalreporter.write_line(line)

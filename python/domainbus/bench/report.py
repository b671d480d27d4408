"""What a benchmark run reports: the table, the skip notes, the JSON document and the chart.

Per timed system and workload: the median ns/event over the rounds, the spread (half the range
of the rounds, relative to the median), events per second at the median, and the ratio of the
median to the Rust backend's on the same workload (>1: slower than domainbus-rust).
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from domainbus.bench.runner import Outcome
from domainbus.bench.systems import REFERENCE, SYSTEMS

__all__ = ["Environment", "Row", "environment", "notes", "plot", "rows", "table", "write_json"]


class Environment(msgspec.Struct, kw_only=True):
    """Where the numbers come from."""

    python: str
    implementation: str
    platform: str
    cpu: str
    cpu_count: int | None
    domainbus_version: str
    domainbus_backend: str
    date: str


class Row(msgspec.Struct, kw_only=True):
    """One outcome with its summary statistics (None when it was not timed)."""

    workload: str
    system: str
    status: str
    reason: str
    events: int
    round_ns: list[float]
    median_ns: float | None
    spread: float | None  # (max - min) / 2 / median of the rounds
    events_per_s: float | None
    ratio_to_rust: float | None  # median / domainbus-rust's median on the same workload


class Document(msgspec.Struct, kw_only=True):
    """The `--json` file."""

    environment: Environment
    events: int
    rounds: int
    quick: bool
    results: list[Row]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> Environment:
    """The interpreter, machine and domainbus build this process runs on."""
    import domainbus

    return Environment(
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        platform=platform.platform(),
        cpu=_cpu_name(),
        cpu_count=os.cpu_count(),
        domainbus_version=domainbus.__version__,
        domainbus_backend=domainbus.BACKEND,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def rows(outcomes: Sequence[Outcome]) -> list[Row]:
    """Each outcome with its median, spread, rate and ratio to the Rust backend."""
    medians = {
        (o.workload, o.system): statistics.median(o.round_ns) for o in outcomes if o.round_ns
    }
    result = []
    for o in outcomes:
        median = medians.get((o.workload, o.system))
        reference = medians.get((o.workload, REFERENCE))
        result.append(
            Row(
                workload=o.workload,
                system=o.system,
                status=o.status,
                reason=o.reason,
                events=o.events,
                round_ns=o.round_ns,
                median_ns=median,
                spread=(max(o.round_ns) - min(o.round_ns)) / 2 / median if median else None,
                events_per_s=1e9 / median if median else None,
                ratio_to_rust=median / reference if median and reference else None,
            )
        )
    return result


def _rate(per_s: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if per_s >= size:
            return f"{per_s / size:.2f}{unit}"
    return f"{per_s:.0f}"


def table(report_rows: Sequence[Row]) -> list[list[str]]:
    """The timed rows as text cells: workload, system, ns/event, ±, events/s, vs rust."""
    cells = []
    for row in report_rows:
        if row.median_ns is None or row.spread is None or row.events_per_s is None:
            continue
        ratio = "" if row.ratio_to_rust is None else f"{row.ratio_to_rust:.2f}x"
        cells.append(
            [
                row.workload,
                row.system,
                f"{row.median_ns:,.1f}",
                f"±{row.spread:.0%}",
                _rate(row.events_per_s),
                ratio,
            ]
        )
    return cells


SYSTEM_ORDER = [system.name for system in SYSTEMS]  # fixed colours in every chart
HEADERS = ("workload", "system", "ns/event", "spread", "events/s", "vs rust")


def notes(report_rows: Sequence[Row]) -> list[str]:
    """One line per reason something was not timed, naming the systems and workloads."""
    every_workload = list(dict.fromkeys(row.workload for row in report_rows))
    every_system = list(dict.fromkeys(row.system for row in report_rows))
    by_reason: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]] = {}
    for row in report_rows:
        if row.status == "ok":
            continue
        systems, workloads = by_reason.setdefault((row.status, row.reason), ({}, {}))
        systems[row.system] = None
        workloads[row.workload] = None
    lines = []
    for (status, reason), (systems, workloads) in by_reason.items():
        verb = "FAILED the call check" if status == "failed" else "skipped"
        if list(systems) == every_system:
            lines.append(f"{verb}: workload {', '.join(workloads)}: {reason}")
            continue
        where = ", ".join(workloads)
        if list(workloads) == every_workload and len(every_workload) > 1:
            where = "every workload"
        lines.append(f"{verb}: {', '.join(systems)} on {where}: {reason}")
    return lines


def write_json(
    path: Path, report_rows: Sequence[Row], *, events: int, rounds: int, quick: bool
) -> None:
    """Write the machine-readable results, with the environment they were measured in."""
    document = Document(
        environment=environment(),
        events=events,
        rounds=rounds,
        quick=quick,
        results=list(report_rows),
    )
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")


def plot(path: Path, report_rows: Sequence[Row], title: str) -> None:
    """A bar chart of ns/event (log scale) per system, grouped by workload, saved to `path`.

    Needs matplotlib (the `bench` extra); ImportError otherwise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [row for row in report_rows if row.median_ns is not None]
    workloads = list(dict.fromkeys(row.workload for row in timed))
    systems = list(dict.fromkeys(row.system for row in timed))
    median = {(row.workload, row.system): row.median_ns for row in timed}
    width = 0.8 / max(len(systems), 1)
    figure, axes = plt.subplots(figsize=(max(8.0, 1.6 * len(workloads)), 5.0))
    for index, system in enumerate(systems):
        xs = [w + (index - (len(systems) - 1) / 2) * width for w in range(len(workloads))]
        ys = [median.get((workload, system)) for workload in workloads]
        present = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        color = f"C{SYSTEM_ORDER.index(system) % 10}" if system in SYSTEM_ORDER else None
        axes.bar([x for x, _ in present], [y for _, y in present], width, label=system, color=color)
    axes.set_yscale("log")
    axes.set_ylabel("ns per event (median, log scale; lower is better)")
    axes.set_xticks(range(len(workloads)), workloads)
    axes.set_title(title)
    axes.legend(
        fontsize="small",
        ncols=min(len(systems), 4),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        frameon=False,
    )
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)

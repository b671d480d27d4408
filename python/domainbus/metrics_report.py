"""The per-handler metrics table the commands print at the end (`domainbus run --metrics`,
`domainbus worker --metrics`): a dispatcher's `metrics()` snapshot (rule 16), slowest first.

    domainbus.metrics_report.print_metrics(dispatcher)

Rows come as the snapshot orders them (by `total_ns`, the estimated total time); the mean is
`total_ns / calls`, and "timed" says how many calls were measured (the rest are estimated, see
`domainbus.pure.metrics`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["enable_metrics", "format_duration", "metrics_table", "print_metrics"]


def enable_metrics(dispatcher: object, target: str) -> None:
    """Switch metrics on, or ValueError when `dispatcher` has none (not a domainbus
    Dispatcher: a publisher, or another object with `dispatch_batch`)."""
    enable = getattr(dispatcher, "enable_metrics", None)
    if not callable(enable):
        raise ValueError(
            f"--metrics needs a domainbus Dispatcher; {target} has no enable_metrics()"
        )
    enable()


def format_duration(ns: float) -> str:
    """`ns` nanoseconds in the unit that fits (ns, us, ms, s)."""
    for unit, size in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= size:
            return f"{ns / size:,.1f} {unit}"
    return f"{ns:,.0f} ns"


def metrics_table(records: Sequence[dict[str, Any]]) -> Any:
    """A rich Table of `records` (a `metrics()` snapshot), in their order."""
    from rich.table import Table

    table = Table(title="handlers, slowest first", title_justify="left")
    for column in ("event type", "handler"):
        table.add_column(column)
    for column in ("calls", "failures", "total", "mean", "timed"):
        table.add_column(column, justify="right")
    for record in records:
        calls = record["calls"]
        table.add_row(
            record["event_type"],
            record["handler"],
            f"{calls:,}",
            f"{record['failures']:,}",
            format_duration(record["total_ns"]),
            format_duration(record["total_ns"] / calls) if calls else "-",
            f"{record['timed_calls']:,}",
        )
    return table


def print_metrics(dispatcher: Any, file: IO[str] | None = None) -> None:
    """Print `dispatcher.metrics()` as a table (to stdout by default)."""
    from rich.console import Console

    records = dispatcher.metrics()
    out = file or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 160)  # no wrapping in pipes
    if not records:
        console.print("metrics: no handler was called")
        return
    console.print(metrics_table(records))

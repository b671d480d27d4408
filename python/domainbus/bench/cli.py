"""`domainbus bench`: every workload on every system, side by side, as a table (and JSON, a chart).

`domainbus.cli` wires the subcommand to `add_arguments` and `run`. Exit status: 0 when every
system that ran made the expected handler calls, 1 when one did not, 2 for bad arguments or a
missing optional dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from domainbus.bench import report, runner, systems, workloads

__all__ = ["add_arguments", "run"]

QUICK_EVENTS, QUICK_ROUNDS = 20_000, 3
FULL_EVENTS, FULL_ROUNDS = 200_000, 5


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `domainbus bench`."""
    parser.description = (
        "Benchmark domainbus (Rust and pure backends) against the article's dispatcher, "
        "the no-routing floor and the installed peers (blinker, pyee, zope.event, PyPubSub)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a first look in seconds: {QUICK_EVENTS:,} events, {QUICK_ROUNDS} rounds",
    )
    parser.add_argument(
        "--events",
        type=_positive,
        metavar="N",
        help=f"events per workload (default {FULL_EVENTS:,}; {QUICK_EVENTS:,} with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        metavar="N",
        help=f"timed rounds per system (default {FULL_ROUNDS}; {QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument(
        "--workload",
        action="append",
        metavar="NAME",
        help="run only this workload (repeatable; see --list)",
    )
    parser.add_argument(
        "--system",
        action="append",
        metavar="NAME",
        help="run only this system (repeatable; domainbus-rust is always kept for the ratios)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--plot", type=Path, metavar="PATH.png", help="also draw a bar chart (needs matplotlib)"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the workloads and systems, then exit"
    )


def run(args: argparse.Namespace) -> int:
    """Run `domainbus bench` with parsed `args`; returns the exit status."""
    try:
        chosen_workloads = (
            workloads.by_name(args.workload) if args.workload else workloads.WORKLOADS
        )
        chosen_systems = _systems(args.system)
    except ValueError as exc:
        print(f"domainbus bench: {exc}", file=sys.stderr)
        return 2
    if args.list:
        _print_list()
        return 0
    if args.plot is not None and not _has_matplotlib():
        print(
            "domainbus bench: --plot needs matplotlib: pip install 'domainbus[bench]'",
            file=sys.stderr,
        )
        return 2
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)

    env = report.environment()
    print(
        f"domainbus {env.domainbus_version} bench: {events:,} events x {rounds} rounds per "
        f"system; Python {env.python} ({env.implementation}) on {env.cpu}, {env.cpu_count} CPUs"
    )
    started = time.perf_counter()
    with _progress_line() as progress:
        outcomes = runner.measure(
            chosen_workloads, chosen_systems, events=events, rounds=rounds, progress=progress
        )
    rows = report.rows(outcomes)
    print()
    print(_markdown(report.HEADERS, report.table(rows)))
    print()
    for workload in chosen_workloads:
        print(f"{workload.name}: {workload.summary}")
    for note in report.notes(rows):
        print(note)
    print(f"took {time.perf_counter() - started:.1f} s")
    if args.json is not None:
        report.write_json(args.json, rows, events=events, rounds=rounds, quick=args.quick)
        print(f"wrote {args.json}")
    if args.plot is not None:
        title = f"domainbus {env.domainbus_version}, Python {env.python}, {env.cpu}"
        report.plot(args.plot, rows, title)
        print(f"wrote {args.plot}")
    return 1 if any(row.status == "failed" for row in rows) else 0


def _systems(names: Sequence[str] | None) -> Sequence[systems.System]:
    if not names:
        return systems.SYSTEMS
    return systems.by_name([systems.REFERENCE, *names])


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _print_list() -> None:
    print("workloads:")
    for workload in workloads.WORKLOADS:
        missing = workload.unavailable()
        print(f"  {workload.name:<11} {workload.summary}" + (f" [{missing}]" if missing else ""))
    print("systems:")
    for system in systems.SYSTEMS:
        missing = system.missing()
        print(f"  {system.name:<15} {system.summary}" + (f" [{missing}]" if missing else ""))


def _markdown(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table, columns padded; text columns left-aligned, numbers right."""
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    numeric = [i >= 2 for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(row, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        ("-" * (w - 1) + ":") if right else "-" * w
        for w, right in zip(widths, numeric, strict=True)
    )
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, cells)])


@contextlib.contextmanager
def _progress_line() -> Iterator[Callable[[str, int, int], None]]:
    """A live progress line on stderr (rich when installed and stderr is a terminal)."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        yield _plain_progress
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("starting", total=None)
    with bar:

        def update(label: str, done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)

        yield update


def _plain_progress(label: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K[{done}/{total}] {label}", end="", file=sys.stderr, flush=True)

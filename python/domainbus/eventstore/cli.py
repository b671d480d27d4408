"""`domainbus replay STORE_URL --projection MODULE:PROJECTION [--from-scratch]`.

Brings a projection up to date with an event store (or rebuilds it with `--from-scratch`),
page by page: each page is committed with the projection's tracking record, so an
interrupted replay resumes where it stopped. `MODULE:PROJECTION` names a `Projection`, or a
callable that takes the opened store and returns one (so the projection can write through
`store.connection`, in the same database). The codec is `--codec MODULE:CODEC`, else the
module's `codec`, else one made of every loaded `DomainEvent` subclass.

Exit status: 0 done, 1 a handler failed or an event could not be decoded, 2 bad usage,
130 interrupted (the committed pages stay applied).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from domainbus.cli_inputs import UsageError, import_target, load_codec
from domainbus.errors import DecodeError

__all__ = ["add_commands", "cmd_replay"]


class _Usage(Exception):
    """Bad command-line input: one line, exit status 2."""


def add_commands(subparsers: Any) -> None:
    """Add `replay` to the `domainbus` command's subparsers."""
    replay = subparsers.add_parser(
        "replay", help="bring a projection up to date with an event store, or rebuild it"
    )
    replay.add_argument("store_url", metavar="STORE_URL", help="sqlite:///PATH or postgresql://")
    replay.add_argument(
        "--projection",
        required=True,
        metavar="MODULE:PROJECTION",
        help="a Projection, or a callable taking the store and returning one",
    )
    replay.add_argument(
        "--from-scratch", action="store_true", help="empty the projection first (reset())"
    )
    replay.add_argument("--codec", metavar="MODULE:CODEC", help="the EventCodec of the events")
    replay.add_argument("--page-size", type=int, default=1000, help="events per transaction")
    replay.set_defaults(handler=cmd_replay)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], object]]:
    """A rich progress bar on stderr when it is a terminal; else nothing."""
    if not sys.stderr.isatty():
        yield lambda advance: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("replaying", total=total)
        yield lambda advance: progress.advance(task, advance)


def cmd_replay(args: argparse.Namespace) -> int:
    """Run `domainbus replay`; returns the exit status."""
    try:
        return _replay(args)
    except (_Usage, UsageError) as exc:
        print(f"domainbus replay: error: {exc}", file=sys.stderr)
        return 2


def _replay(args: argparse.Namespace) -> int:
    from domainbus.eventstore import open_store
    from domainbus.eventstore.projection import Projection, ProjectionRunner

    if args.page_size < 1:
        raise _Usage("--page-size must be >= 1")
    module, target = import_target(args.projection)
    codec = load_codec(args.codec, module, hint=None)
    try:
        store = open_store(args.store_url, codec)
    except (ValueError, OSError, ImportError) as exc:
        raise _Usage(f"cannot open {args.store_url!r}: {exc}") from None
    except Exception as exc:  # the database refused (psycopg.OperationalError, ...)
        raise _Usage(f"cannot open {args.store_url!r}: {exc}") from None
    try:
        projection = target if isinstance(target, Projection) else None
        if projection is None and callable(target):
            projection = target(store)
        if not isinstance(projection, Projection):
            raise _Usage(f"{args.projection} is not a Projection (nor a factory returning one)")
        runner = ProjectionRunner(store, projection, page_size=args.page_size)
        if args.from_scratch:
            runner.reset()
        start = projection.position()
        started = time.perf_counter()
        try:
            with _progress(store.count_after(start)) as advance:
                applied = runner.catch_up(advance)
        except DecodeError as exc:
            print(f"domainbus replay: {exc}", file=sys.stderr)
            print("  the pages before it were applied; fix the event or its upcaster, then run "
                  "again to resume", file=sys.stderr)  # fmt: skip
            return 1
        except KeyboardInterrupt:
            print(
                f"\ninterrupted at position {projection.position()}; run again to resume",
                file=sys.stderr,
            )
            return 130
        except Exception as exc:
            traceback.print_exception(exc, file=sys.stderr)
            print(f"domainbus replay: a handler failed: {exc!r}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - started
        rate = f"{applied / elapsed:,.0f} events/s" if elapsed > 0 else "n/a events/s"
        print(
            f"replayed {applied:,} events into {projection.projection_name!r} in "
            f"{elapsed:.2f} s: {rate} (now at position {projection.position()})"
        )
        return 0
    finally:
        store.close()

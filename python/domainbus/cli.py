"""The `domainbus` command: generate event logs, replay them through a dispatcher, and more.

    domainbus generate OUT --count N [--types K] [--format msgpack|jsonl]
    domainbus run MODULE:DISPATCHER FILE [--format F] [--batch-size N] [--start-at N]
                  [--dead-letter PATH] [--codec MODULE:CODEC]
    domainbus info | demo | bench ...

Exit status: 0 success, 1 a handler failed or a record could not be decoded (the message says
where, and the `--start-at` to resume with), 2 bad usage (missing file, bad MODULE:DISPATCHER,
unknown format), 130 interrupted. Progress bars appear only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from operator import length_hint
from typing import Any

from domainbus.codec import FORMATS, DeadLetterFile, DecodeError, EventCodec
from domainbus.codec.frames import count_frame_events
from domainbus.events import DomainEvent

__all__ = ["main"]


_DESCRIPTION = "Generate event logs and replay them through a dispatcher."


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


# -- helpers ---------------------------------------------------------------------------------


def _import_target(spec: str) -> tuple[Any, Any]:
    """`(module, object)` named by "package.module:attr.path"."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"expected MODULE:NAME (like myapp.events:dispatcher), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc!r}") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return module, target


def _load_dispatcher(spec: str) -> tuple[Any, Any]:
    """The user's dispatcher: an object with `dispatch_batch`, or a function returning one."""
    module, target = _import_target(spec)
    if not hasattr(target, "dispatch_batch") and callable(target):
        target = target()
    if not callable(getattr(target, "dispatch_batch", None)):
        raise UsageError(f"{spec} is not a dispatcher (it has no dispatch_batch method)")
    return module, target


def _all_event_types() -> list[type[DomainEvent]]:
    found: list[type[DomainEvent]] = []
    todo = list(DomainEvent.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _load_codec(spec: str | None, module: Any) -> EventCodec:
    """`--codec MODULE:NAME`; else the dispatcher module's `codec`; else every loaded event."""
    if spec is not None:
        codec = _import_target(spec)[1]
        if not isinstance(codec, EventCodec):
            raise UsageError(f"{spec} is not an EventCodec")
        return codec
    codec = getattr(module, "codec", None)
    if isinstance(codec, EventCodec):
        return codec
    types = _all_event_types()
    if not types:
        raise UsageError("no DomainEvent subclasses are loaded: pass --codec MODULE:CODEC")
    try:
        return EventCodec(*types)
    except ValueError as exc:
        raise UsageError(f"{exc}; pass --codec MODULE:CODEC") from None


def _check_input(path: str, format: str | None) -> None:
    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path!r}")


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; else a silent stand-in."""
    if not sys.stderr.isatty():
        yield lambda advance: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda advance: progress.advance(task, advance)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} events/s" if seconds > 0 else "n/a events/s"


# -- commands --------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from domainbus import demo

    if args.format is not None and args.format not in FORMATS:
        raise UsageError(f"unknown format {args.format!r}: expected one of {', '.join(FORMATS)}")
    if not 1 <= args.types <= len(demo.EVENT_TYPES):
        raise UsageError(f"--types must be from 1 to {len(demo.EVENT_TYPES)}, not {args.types}")
    started = time.perf_counter()
    events = demo.generate_events(args.count, args.types, args.seed)
    with (
        _progress("generating", args.count) as advance,
        demo.codec.writer(args.out, args.format, args.batch_size) as writer,
    ):
        while written := writer.write(islice(events, args.batch_size)):
            advance(written)
    elapsed = time.perf_counter() - started
    size = os.path.getsize(args.out)
    print(
        f"wrote {writer.count:,} events ({args.types} types, {writer.format}, {size:,} bytes) "
        f"to {args.out} in {elapsed:.2f} s"
    )
    return 0


_BATCH_INDEX = re.compile(r"at batch index (\d+)$")


def _failed_position(exc: BaseException, batch_start: int, remaining: int, size: int) -> int:
    """Stream index of the event whose handler raised: from the dispatcher's note, else from
    how far `dispatch_batch` got through the batch's iterator."""
    for note in getattr(exc, "__notes__", ()):
        if match := _BATCH_INDEX.search(note):
            return batch_start + int(match[1])
    return batch_start + max(0, size - remaining - 1)


def _resume_command(argv: Sequence[str], start_at: int) -> str:
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--start-at":
            skip = True
        elif not arg.startswith("--start-at="):
            args.append(arg)
    return shlex.join(["domainbus", *args, "--start-at", str(start_at)])


def cmd_run(args: argparse.Namespace) -> int:
    _check_input(args.file, args.format)
    if args.batch_size < 1 or args.start_at < 0:
        raise UsageError("--batch-size must be >= 1 and --start-at >= 0")
    module, dispatcher = _load_dispatcher(args.target)
    codec = _load_codec(args.codec, module)
    dead_letter = DeadLetterFile(args.dead_letter) if args.dead_letter else None
    batches = codec.iter_indexed_batches(
        args.file, args.batch_size, args.format, start_at=args.start_at, on_invalid=dead_letter
    )
    dispatch_batch = dispatcher.dispatch_batch
    events = calls = 0
    position = args.start_at
    started = time.perf_counter()
    try:
        with _progress("replaying", _total(args)) as advance:
            for batch in batches:
                position = batch.start
                iterator = iter(batch.events)
                try:
                    calls += dispatch_batch(iterator)
                except Exception as exc:
                    size = len(batch.events)
                    failed = _failed_position(exc, batch.start, length_hint(iterator), size)
                    return _report_failure(args, exc, failed, events + failed - batch.start)
                events += len(batch.events)
                position = batch.start + len(batch.events)
                advance(len(batch.events))
    except DecodeError as exc:
        print(f"domainbus run: {exc}", file=sys.stderr)
        if exc.index is None:  # the stream as a whole is unreadable
            return 1
        print(
            f"  events before {exc.index} were dispatched; fix the record, use --dead-letter "
            f"PATH, or skip it: {_resume_command(args.argv, exc.index + 1)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; resume with: {_resume_command(args.argv, position)}", file=sys.stderr
        )
        return 130
    finally:
        if dead_letter is not None:
            dead_letter.close()
    elapsed = time.perf_counter() - started
    print(
        f"dispatched {events:,} events ({calls:,} handler calls) in {elapsed:.2f} s: "
        f"{_rate(events, elapsed)}"
    )
    if dead_letter is not None and dead_letter.count:
        print(f"{dead_letter.count:,} invalid record(s) written to {dead_letter.path}")
    return 0


def _total(args: argparse.Namespace) -> int | None:
    """Events left to replay, for the progress bar: counted from frame headers (msgpack only,
    and only on a terminal); None when unknown."""
    if not sys.stderr.isatty():
        return None
    with open(args.file, "rb") as file:
        total = count_frame_events(file)
    return None if total is None else max(0, total - args.start_at)


def _report_failure(args: argparse.Namespace, exc: Exception, failed: int, done: int) -> int:
    """Say which event failed and how to resume; handler errors are exit status 1."""
    traceback.print_exception(exc, file=sys.stderr)
    print(f"domainbus run: a handler failed on event {failed}: {exc!r}", file=sys.stderr)
    print(
        f"  this run dispatched {done:,} events before it; after fixing, resume with:\n"
        f"  {_resume_command(args.argv, failed)}\n"
        "  (handlers that already ran for that event run again)",
        file=sys.stderr,
    )
    return 1


def cmd_info(args: argparse.Namespace) -> int:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import domainbus

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    try:
        import domainbus._core as core

        extension = f"loaded ({core.__file__})"
    except ImportError as exc:
        extension = f"not loaded ({exc})"
    print(f"domainbus {domainbus.__version__}")
    print(f"backend: {domainbus.BACKEND} (DOMAINBUS_BACKEND={os.environ.get('DOMAINBUS_BACKEND')})")
    print(f"extension: {extension}")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"msgspec: {installed('msgspec')}, rich: {installed('rich')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from domainbus import demo

    dispatcher = demo.article_dispatcher()
    users = [("ada", "Ada Lovelace"), ("alan", "Alan Turing")]
    for n, (username, _) in enumerate(users, 1):
        event = demo.UserRegistered(
            user_id=f"u-{n}", username=username, email=f"{username}@example.com"
        )
        print(f"dispatch UserRegistered(username={username!r})")
        restored = demo.codec.decode(demo.codec.encode(event))  # as a log replay would see it
        calls = dispatcher.dispatch(restored)
        print(f"  -> {calls} handler calls")
    return 0


def run_bench(argv: Sequence[str]) -> int:
    """`domainbus bench ...`, delegated to `domainbus.bench.cli` (imported only here)."""
    try:
        bench = importlib.import_module("domainbus.bench.cli")
    except ImportError as exc:
        print(f"domainbus bench: the benchmark module is not available ({exc})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="domainbus bench", description="Run the benchmarks.")
    bench.add_arguments(parser)
    return int(bench.run(parser.parse_args(argv)))


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="domainbus", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="write a synthetic event log (the demo schema)")
    gen.add_argument("out", metavar="OUT", help="file to write")
    gen.add_argument("--count", type=int, default=1_000_000, help="events (default 1,000,000)")
    gen.add_argument("--types", type=int, default=6, help="demo event types to use (1-6)")
    gen.add_argument("--format", help="msgpack or jsonl (default: from OUT's suffix)")
    gen.add_argument("--batch-size", type=int, default=1024, help="events per frame")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=cmd_generate)

    run = commands.add_parser("run", help="replay an event log through your dispatcher")
    run.add_argument("target", metavar="MODULE:DISPATCHER", help="dispatcher, or a factory")
    run.add_argument("file", metavar="FILE")
    run.add_argument("--format", help="msgpack or jsonl (default: detected)")
    run.add_argument("--batch-size", type=int, default=1024, help="events per dispatch_batch")
    run.add_argument("--start-at", type=int, default=0, help="index of the first event to run")
    run.add_argument("--dead-letter", metavar="PATH", help="append bad records here, go on")
    run.add_argument(
        "--codec",
        metavar="MODULE:CODEC",
        help="the EventCodec to decode with (default: MODULE's `codec`, else all loaded events)",
    )
    run.set_defaults(handler=cmd_run)

    commands.add_parser("info", help="versions and backend in use").set_defaults(handler=cmd_info)
    commands.add_parser(
        "demo", help="dispatch a few events to the article's handlers"
    ).set_defaults(handler=cmd_demo)
    commands.add_parser("bench", help="run the benchmarks (domainbus bench --help)")
    from domainbus.redis.cli import add_commands as add_redis_commands  # imports no redis-py

    add_redis_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `domainbus` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"domainbus {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"domainbus {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

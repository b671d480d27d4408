"""The `domainbus` command: generate event logs, replay them through a dispatcher, and more.

    domainbus generate OUT --count N [--types K] [--format msgpack|jsonl]
    domainbus run MODULE:DISPATCHER FILE [--format F] [--batch-size N] [--start-at N]
                  [--dead-letter PATH] [--codec MODULE:CODEC] [--metrics]
    domainbus info | demo | bench ... | --version

Exit status: 0 success, 1 a handler failed or a record could not be decoded (the message says
where, and the `--start-at` to resume with), 2 bad usage (missing file, bad MODULE:DISPATCHER,
unknown format, a bad DOMAINBUS_BACKEND), 130 interrupted. Progress bars (count, rate, ETA)
appear only when stderr is a terminal.

Subcommands are registered in `SUBCOMMANDS`: each entry adds its parser to the `commands`
subparsers and sets `handler=` to a function of the parsed arguments returning the exit
status; raise `UsageError` for bad input (one line, exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from domainbus.cli_inputs import (
    DEMO_CODEC_HINT,
    UsageError,
    check_input,
    load_codec,
    load_dispatcher,
    rate,
)
from domainbus.codec import FORMATS, DeadLetterFile, DecodeError
from domainbus.codec.frames import count_frame_events
from domainbus.codec.streams import JSONL_SUFFIXES, MSGPACK_SUFFIXES, Batch
from domainbus.delivery import batch_index, failed_indexes
from domainbus.metrics_report import enable_metrics, print_metrics
from domainbus.progress import progress
from domainbus.redis.cli import add_commands as add_redis_commands

__all__ = ["SUBCOMMANDS", "UsageError", "build_parser", "main"]


_DESCRIPTION = "Generate event logs and replay them through a dispatcher."


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# -- generate --------------------------------------------------------------------------------


def output_format(path: str, format: str | None) -> str:
    """The format to write `path` in: `--format`, else from its suffix, else UsageError."""
    if format is not None:
        if format not in FORMATS:
            raise UsageError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in MSGPACK_SUFFIXES:
        return "msgpack"
    known = ", ".join((*JSONL_SUFFIXES, *MSGPACK_SUFFIXES))
    raise UsageError(
        f"cannot tell the format from the name {path!r}: pass --format msgpack or --format "
        f"jsonl, or use one of the suffixes {known}"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from domainbus import demo

    format = output_format(args.out, args.format)
    if not 1 <= args.types <= len(demo.EVENT_TYPES):
        raise UsageError(f"--types must be from 1 to {len(demo.EVENT_TYPES)}, not {args.types}")
    if args.count < 0 or args.batch_size < 1:
        raise UsageError("--count must be >= 0 and --batch-size >= 1")
    if os.path.isdir(args.out):
        raise UsageError(f"{args.out!r} is a directory")
    started = time.perf_counter()
    events = demo.generate_events(args.count, args.types, args.seed)
    with (
        progress("generating", args.count) as advance,
        demo.codec.writer(args.out, format, args.batch_size) as writer,
    ):
        from itertools import islice

        while written := writer.write(islice(events, args.batch_size)):
            advance(written)
    elapsed = time.perf_counter() - started
    size = os.path.getsize(args.out)
    print(
        f"wrote {writer.count:,} events ({args.types} types, {writer.format}, {size:,} bytes) "
        f"to {args.out} in {elapsed:.2f} s"
    )
    return 0


# -- run -------------------------------------------------------------------------------------


def resume_command(argv: Sequence[str], start_at: int) -> str:
    """The command line that ran, with `--start-at` set to `start_at`."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--start-at":
            skip = True
        elif not arg.startswith("--start-at="):
            args.append(arg)
    return shlex.join(["domainbus", *args, "--start-at", str(start_at)])


class _Replay:
    """The counters of one `domainbus run`."""

    def __init__(self, start_at: int) -> None:
        self.events = 0
        self.calls = 0
        self.next = start_at  # stream index of the first event not known to be dispatched


def cmd_run(args: argparse.Namespace) -> int:
    check_input(args.file, args.format)
    if args.batch_size < 1 or args.start_at < 0:
        raise UsageError("--batch-size must be >= 1 and --start-at >= 0")
    module, dispatcher = load_dispatcher(args.target)
    if not args.metrics:
        return _replay(args, module, dispatcher)
    try:
        enable_metrics(dispatcher, args.target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _replay(args, module, dispatcher)
    finally:  # however the run ended: what the handlers did until then
        print_metrics(dispatcher)


def _replay(args: argparse.Namespace, module: Any, dispatcher: Any) -> int:
    codec = load_codec(args.codec, module)
    dead_letter = DeadLetterFile(args.dead_letter) if args.dead_letter else None
    reader = codec.iter_indexed_batches(
        args.file, args.batch_size, args.format, start_at=args.start_at, on_invalid=dead_letter
    )
    replay = _Replay(args.start_at)
    started = time.perf_counter()
    try:
        with reader, progress("replaying", _total(args)) as advance:
            for batch in reader:
                replay.next = batch.start
                try:
                    replay.calls += dispatcher.dispatch_batch(batch.events)
                except Exception as exc:
                    return _report_failure(args, exc, batch, replay)
                replay.events += len(batch.events)
                replay.next = batch.start + len(batch.events)
                advance(len(batch.events))
    except DecodeError as exc:
        return _report_decode_error(args, exc)
    except KeyboardInterrupt as exc:
        index = batch_index(exc, args.batch_size)
        if index is not None:
            replay.next += index
        _say(f"\ninterrupted; resume with: {resume_command(args.argv, replay.next)}")
        return 130
    finally:
        if dead_letter is not None:
            dead_letter.close()
    elapsed = time.perf_counter() - started
    print(
        f"dispatched {replay.events:,} events ({replay.calls:,} handler calls) in "
        f"{elapsed:.2f} s: {rate(replay.events, elapsed)}"
    )
    if dead_letter is not None and dead_letter.count:
        print(
            f"{dead_letter.count:,} invalid record(s) holding {dead_letter.events:,} event(s) "
            f"written to {dead_letter.path}"
        )
        if dead_letter.stopped is not None:  # its bytes are in the dead-letter file too
            _say(
                "domainbus run: the stream ended early, nothing after it was read: "
                f"{dead_letter.stopped}"
            )
    return _report_nothing_done(args, reader.position, replay)


def _report_nothing_done(args: argparse.Namespace, total: int, replay: _Replay) -> int:
    """Say so when the run did nothing useful: past the end, an empty file, no handlers."""
    if args.start_at > total:
        _say(
            f"domainbus run: --start-at {args.start_at} is past the end of {args.file}, "
            f"which holds {total:,} event(s); nothing was dispatched"
        )
        return 2
    if total == 0:
        _say(f"domainbus run: {args.file} holds no events; nothing was dispatched")
    elif replay.events == 0 and args.start_at == total:
        _say(f"domainbus run: --start-at {args.start_at} is the end of {args.file}: nothing left")
    elif replay.events and replay.calls == 0:
        _say(
            f"domainbus run: warning: no handler ran: {args.target} has no handler for any of "
            f"the {replay.events:,} event(s)"
        )
    return 0


def _total(args: argparse.Namespace) -> int | None:
    """Events left to replay, for the progress bar: counted from frame headers (msgpack only,
    and only on a terminal); None when unknown."""
    if not sys.stderr.isatty():
        return None
    with open(args.file, "rb") as file:
        total = count_frame_events(file)
    return None if total is None else max(0, total - args.start_at)


def _report_failure(args: argparse.Namespace, exc: Exception, batch: Batch, replay: _Replay) -> int:
    """Say which event failed and how to resume (rule 12: from `batch_index` only)."""
    size = len(batch.events)
    traceback.print_exception(exc, file=sys.stderr)
    index = batch_index(exc, size)
    indexes = failed_indexes(exc, size) if index is None else [index]
    if indexes is None:
        _say(
            f"domainbus run: {args.target} raised {exc!r} without a batch_index: none of the "
            f"batch of events {batch.start}-{batch.start + size - 1} counts as dispatched"
        )
        failed = batch.start
    else:
        failed = batch.start + min(indexes)
        events = ", ".join(str(batch.start + i) for i in sorted(set(indexes)))
        what = f"event {events}" if len(indexes) == 1 else f"events {events}"
        _say(f"domainbus run: a handler failed on {what}: {exc!r}")
    done = replay.events + failed - batch.start
    _say(
        f"  this run dispatched {done:,} events before it; after fixing, resume with:\n"
        f"  {resume_command(args.argv, failed)}\n"
        "  (handlers that already ran for that event run again)"
    )
    return 1


def _report_decode_error(args: argparse.Namespace, exc: DecodeError) -> int:
    """Say what could not be read, and the `--start-at` that gets past it (if any)."""
    _say(f"domainbus run: {exc}")
    if exc.reason == "unknown-tag" and args.codec is None:
        _say(f"  ({DEMO_CODEC_HINT})")
    if exc.index is None:  # the stream as a whole is unreadable
        return 1
    done = f"  events before {exc.index} were dispatched"
    if exc.resume_at is None:
        _say(
            f"{done}; nothing after this point can be read "
            f"({'the file is cut off' if exc.reason == 'truncated' else 'the file is corrupt'})"
        )
        return 1
    skipped = exc.resume_at - exc.index
    _say(
        f"{done}; fix the record, use --dead-letter PATH, or skip {skipped:,} event(s): "
        f"{resume_command(args.argv, exc.resume_at)}"
    )
    return 1


# -- info, demo, bench -----------------------------------------------------------------------


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
        _say(f"domainbus bench: the benchmark module is not available ({exc})")
        return 2
    parser = argparse.ArgumentParser(prog="domainbus bench", description="Run the benchmarks.")
    bench.add_arguments(parser)
    return int(bench.run(parser.parse_args(argv)))


# -- parser ----------------------------------------------------------------------------------

Commands = Any  # argparse's subparsers action (its class is private)


def add_generate(commands: Commands) -> None:
    gen = commands.add_parser("generate", help="write a synthetic event log (the demo schema)")
    gen.add_argument("out", metavar="OUT", help="file to write (.bin/.msgpack or .jsonl)")
    gen.add_argument("--count", type=int, default=1_000_000, help="events (default 1,000,000)")
    gen.add_argument("--types", type=int, default=6, help="demo event types to use (1-6)")
    gen.add_argument("--format", help="msgpack or jsonl (default: from OUT's suffix)")
    gen.add_argument("--batch-size", type=int, default=1024, help="events per frame")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=cmd_generate)


def add_run(commands: Commands) -> None:
    run = commands.add_parser("run", help="replay an event log through your dispatcher")
    run.add_argument("target", metavar="MODULE:DISPATCHER", help="dispatcher, or a factory")
    run.add_argument("file", metavar="FILE")
    run.add_argument("--format", help="msgpack or jsonl (default: detected from the header)")
    run.add_argument("--batch-size", type=int, default=1024, help="events per dispatch_batch")
    run.add_argument("--start-at", type=int, default=0, help="index of the first event to run")
    run.add_argument("--dead-letter", metavar="PATH", help="append bad records here, go on")
    run.add_argument(
        "--codec",
        metavar="MODULE:CODEC",
        help="the EventCodec to decode with (default: MODULE's `codec`, else all loaded events; "
        "domainbus.demo:codec for `domainbus generate` output)",
    )
    run.add_argument(
        "--metrics",
        action="store_true",
        help="count each handler's calls, failures and time; print the table at the end",
    )
    run.set_defaults(handler=cmd_run)


def add_info(commands: Commands) -> None:
    commands.add_parser("info", help="versions and backend in use").set_defaults(handler=cmd_info)


def add_demo(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="dispatch a few events to the article's handlers")
    demo.set_defaults(handler=cmd_demo)


def add_bench(commands: Commands) -> None:
    commands.add_parser("bench", help="run the benchmarks (domainbus bench --help)")


def add_replay(commands: Commands) -> None:
    """`domainbus replay`: rebuild a projection from an event store (domainbus.eventstore.cli)."""
    from domainbus.eventstore.cli import add_commands

    add_commands(commands)


SUBCOMMANDS: list[Callable[[Commands], None]] = [
    add_generate,
    add_run,
    add_info,
    add_demo,
    add_bench,
    add_replay,
    add_redis_commands,  # publish, worker, dead-letters (redis-py is imported when they run)
]
"""Each adds one subcommand to the parser (other modules append theirs here)."""


def _version() -> str:
    import domainbus

    if domainbus.backend_error is not None:
        return f"domainbus {domainbus.__version__} (no usable backend: {domainbus.backend_error})"
    return f"domainbus {domainbus.__version__} ({domainbus.BACKEND} backend)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="domainbus", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in SUBCOMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `domainbus` command; returns the exit status."""
    import domainbus

    argv = list(sys.argv[1:] if argv is None else argv)
    if domainbus.backend_error is not None and argv[:1] != ["--version"]:
        _say(f"domainbus: error: {domainbus.backend_error}")
        return 2
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.handler(args))
    except UsageError as exc:
        _say(f"domainbus {args.command}: error: {exc}")
        return 2
    except OSError as exc:
        _say(f"domainbus {args.command}: error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

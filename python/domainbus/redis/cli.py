"""The Redis commands of `domainbus` (registered by `domainbus.cli` through `add_commands`):

    domainbus publish FILE --redis URL --stream NAME [--partitions N] [--codec MODULE:CODEC]
    domainbus worker MODULE:DISPATCHER --redis URL --stream NAME --group GROUP
                     [--consumer NAME] [--codec MODULE:CODEC] [--max-deliveries N] [--trace] ...
    domainbus dead-letters list|requeue --redis URL --stream NAME [ID ...] [--all]

Importing this module needs no redis-py: the commands import it when they run (without it they
say to install `domainbus[redis]`, exit status 2). `publish` reads the `generate`/`run` file
formats (default codec: the demo schema's, as `generate` writes). `worker` prints a progress
line (events/s, the group's lag) every `--report-every` seconds and exits 0 after SIGTERM or
Ctrl-C, once its batch is acknowledged and its leases released. `worker --trace` dispatches
through `domainbus.observe.instrument`: spans go to the global tracer provider, which the
dispatcher's module (or `opentelemetry-instrument`) sets up. Exit status 1: Redis could not
be reached or refused a command (the message says which).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from domainbus.cli_inputs import UsageError, check_input, load_codec, load_dispatcher, rate

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Add `publish`, `worker` and `dead-letters` to the `domainbus` subcommands."""
    pub = commands.add_parser("publish", help="push an event file to Redis streams")
    pub.add_argument("file", metavar="FILE")
    _connection_arguments(pub)
    pub.add_argument("--partitions", type=int, default=16, help="partition streams (16)")
    pub.add_argument("--format", help="msgpack or jsonl (default: detected)")
    pub.add_argument("--batch-size", type=int, default=10_000, help="events per publish call")
    pub.add_argument("--maxlen", type=int, help="trim each partition stream to about N entries")
    pub.add_argument("--codec", metavar="MODULE:CODEC", help="default: the demo schema's codec")
    pub.set_defaults(handler=cmd_publish)

    work = commands.add_parser("worker", help="consume Redis streams with your dispatcher")
    work.add_argument("target", metavar="MODULE:DISPATCHER", help="dispatcher, or a factory")
    _connection_arguments(work)
    work.add_argument("--group", required=True, help="consumer group")
    work.add_argument("--consumer", help="unique name in the group (default: host-pid)")
    work.add_argument("--partitions", type=int, help="default: as recorded for the stream")
    work.add_argument("--codec", metavar="MODULE:CODEC", help="default: MODULE's `codec`")
    work.add_argument("--max-deliveries", type=int, default=5)
    work.add_argument("--retry-delay", type=float, default=1.0, help="seconds (1.0)")
    work.add_argument("--lease-ms", type=int, default=5000)
    work.add_argument("--heartbeat", type=float, default=0.25, help="seconds (0.25)")
    work.add_argument("--read-count", type=int, default=2, help="entries per partition per read")
    work.add_argument("--report-every", type=float, default=5.0, help="seconds (5.0)")
    work.add_argument(
        "--trace",
        action="store_true",
        help="a span per batch through domainbus.observe, continuing the publisher's trace "
        "(needs domainbus[otel]; spans go to the global tracer provider)",
    )
    work.add_argument(
        "--metrics", action="store_true", help="print each handler's calls and time at the end"
    )
    work.set_defaults(handler=cmd_worker)

    dead = commands.add_parser("dead-letters", help="list or requeue a stream's dead letters")
    dead.add_argument("action", choices=("list", "requeue"))
    dead.add_argument("ids", nargs="*", metavar="ID", help="dead letters to requeue")
    _connection_arguments(dead)
    dead.add_argument("--all", action="store_true", help="requeue every dead letter")
    dead.add_argument("--limit", type=int, help="list at most N")
    dead.set_defaults(handler=cmd_dead_letters)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db")
    parser.add_argument("--stream", required=True, metavar="NAME", help="stream name")


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise UsageError("redis-py is not installed: pip install 'domainbus[redis]'") from None
    return redis


def cmd_publish(args: argparse.Namespace) -> int:
    redis = _redis()
    from domainbus import demo
    from domainbus.progress import progress
    from domainbus.redis.publisher import PublishError, RedisPublisher

    check_input(args.file, args.format)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    codec = load_codec(args.codec, demo)
    try:
        publisher = RedisPublisher(
            args.redis, codec, stream=args.stream, partitions=args.partitions, maxlen=args.maxlen
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    published = 0
    started = time.perf_counter()
    reader = codec.iter_indexed_batches(args.file, args.batch_size, args.format)
    try:
        with reader, progress("publishing") as advance:
            for batch in reader:
                published += publisher.publish_batch(batch.events)
                advance(len(batch.events))
    except ValueError as exc:  # e.g. the stream was set up with another partition count
        raise UsageError(str(exc)) from None
    except (PublishError, redis.RedisError) as exc:
        print(f"domainbus publish: {exc}", file=sys.stderr)
        print(f"  {published:,} events were published before it", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(
        f"published {published:,} events to {args.stream} ({publisher.partitions} partitions) "
        f"in {elapsed:.2f} s: {rate(published, elapsed)}"
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    # SIGTERM / Ctrl-C while starting (importing the user's module, connecting) is a stop
    # request too: the worker then exits 0 before consuming, instead of dying by the signal.
    early_stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and early_stop:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, as while consuming
        early_stop.append(signum)

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return _worker(args, early_stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _worker(args: argparse.Namespace, early_stop: list[int]) -> int:
    redis = _redis()
    from domainbus.redis.worker import RedisWorker, WorkerStats

    instrument = _instrument() if args.trace else None  # before importing the user's module
    module, dispatcher = load_dispatcher(args.target)
    codec = load_codec(args.codec, module)
    if args.metrics:
        from domainbus.metrics_report import enable_metrics

        try:
            enable_metrics(dispatcher, args.target)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if instrument is not None:
        dispatcher = instrument(dispatcher)

    def report(stats: WorkerStats) -> None:
        print(stats.line(), flush=True)

    options = {
        "codec": codec,
        "stream": args.stream,
        "group": args.group,
        "consumer": args.consumer,
        "partitions": args.partitions,
        "max_deliveries": args.max_deliveries,
        "retry_delay": args.retry_delay,
        "lease_ms": args.lease_ms,
        "heartbeat_s": args.heartbeat,
        "read_count": args.read_count,
        "report": report,
        "report_every": args.report_every,
    }
    try:
        worker = RedisWorker(args.redis, dispatcher, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"{worker.consumer}: consuming {args.stream} as group {args.group}", flush=True)
    if early_stop:
        worker.stop()  # asked to stop while starting: `run` returns before reading
    started = time.perf_counter()
    try:
        stats = worker.run()
    except ValueError as exc:  # e.g. the stream was set up with another partition count
        raise UsageError(str(exc)) from None
    except redis.RedisError as exc:
        print(f"domainbus worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(
        f"{worker.consumer}: stopped after {stats.events:,} events in {stats.entries:,} entries "
        f"({stats.dead_letters:,} dead letters) in {elapsed:.1f} s",
        flush=True,
    )
    if args.metrics:
        from domainbus.metrics_report import print_metrics

        print_metrics(dispatcher)
    return 0


def _instrument() -> Any:
    """`domainbus.observe.instrument`: wraps the dispatcher so each dispatched batch gets a span
    whose parent (or links) is the trace context the publisher stored with the frames."""
    try:
        from domainbus.observe import instrument
    except ImportError:
        raise UsageError("--trace needs OpenTelemetry: pip install 'domainbus[otel]'") from None
    return instrument


def cmd_dead_letters(args: argparse.Namespace) -> int:
    redis = _redis()
    from domainbus.redis.connection import connect
    from domainbus.redis.dead_letters import DeadLetters

    dead = DeadLetters(connect(args.redis), args.stream)
    try:
        if args.action == "list":
            if args.ids or args.all:
                raise UsageError("list takes no ids and no --all")
            letters = dead.list(args.limit)
            for d in letters:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.failed_at))
                print(
                    f"{d.id}  {d.source} entry {d.entry_id} index {d.index}  {d.count} event(s)  "
                    f"{d.reason} after {d.deliveries} deliveries ({d.group}/{d.consumer}, "
                    f"{stamp} UTC): {d.error}"
                )
            print(f"{len(letters)} dead letter(s) in {dead.key}")
            return 0
        if bool(args.ids) == args.all:
            raise UsageError("requeue takes dead-letter ids or --all (not both)")
        try:
            count = dead.requeue(None if args.all else args.ids)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
        print(f"requeued {count} dead letter(s) to their partition streams")
        return 0
    except redis.RedisError as exc:
        print(f"domainbus dead-letters: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

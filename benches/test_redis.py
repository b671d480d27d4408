"""End to end through Redis Streams, publish to handler, no-op handler, side by side in one run:
domainbus with 1 and 2 worker processes vs FastStream's Redis Streams consumer-group subscriber
(its default, one message per handler call, and `batch=True, max_records=1000`) vs a raw redis-py
loop of one stream entry per event. Redis on loopback without persistence, started here.

Each system's consumers run in their own processes and are ready (connected, group created,
for domainbus the partitions leased) before the clock starts; then this process publishes the
events (domainbus: `RedisPublisher`, frames of 1,000 events over 16 partitions; the others one
entry per event, pipelined 1,000 XADDs a round trip, FastStream's own message format), and the
clock stops when the group has read and acknowledged every entry (XINFO GROUPS). So the time
covers publishing and consuming, overlapping as in production, on this 2-core machine (the
publisher, the workers and redis-server share the cores). "drain" measures instead a backlog
published beforehand (publishing not timed), consumer start-up included: the consuming side
alone, which is what the issue's anchors (FastStream ~2.8k/s default, ~83k/s batch) measure.
Each line gives the CPU per event of the publisher, the consumers and redis-server (INFO cpu).

The runner first prints a "floor": the CPU per event of msgspec alone encoding and decoding
the bench event, and of pipelined XADDs and XREADGROUP/XACK of prebuilt frames (client and
redis-server), so the end-to-end figures can be set against what this machine allows at best
(cores / floor events per second, nothing of domainbus counted).

    python3 -m pytest benches/test_redis.py                     # 200,000 events (pytest-benchmark)
    python3 -m pytest benches --benchmark-disable -q            # quick check: 2,000 events
    PYTHONPATH=python python3 benches/test_redis.py --events 2000000   # the side-by-side tables

The runner measures both ways (`--mode e2e|drain|both`). The peers are 10-1000x slower, so they
get fewer events (`--peer-events` 200,000 for the raw loop and FastStream's batch mode,
`--faststream-events` 20,000 for its default mode); the rates are per second, so the ratios
stay comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import domainbus
from domainbus import DomainEvent
from domainbus.codec import EventCodec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTITIONS = 16
FASTSTREAM_EVENTS = 20_000
PEER_EVENTS = 200_000
MODES = {
    "e2e": "end to end: consumers ready, then publish; until the last acknowledgement",
    "drain": "drain: a backlog published first; consumer start-up to the last acknowledgement",
}


class Placed(DomainEvent):
    aggregate_id: str
    seq: int


CODEC = EventCodec(Placed)


def build_events(count: int, keys: int = 1_000) -> list[Placed]:
    return [Placed(aggregate_id=f"k{n % keys}", seq=n // keys) for n in range(count)]


# -- the systems -----------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    kind: str  # "domainbus", "faststream", "raw"
    workers: int = 1
    batch: bool = False

    @property
    def streams(self) -> list[str]:
        if self.kind == "domainbus":
            return [f"{self.name}:{p}" for p in range(PARTITIONS)]
        return [self.name]


SYSTEMS = (
    System("domainbus-1w", "domainbus", workers=1),
    System("domainbus-2w", "domainbus", workers=2),
    System("faststream", "faststream"),
    System("faststream-batch", "faststream", batch=True),
    System("raw", "raw"),
)


def publish(system: System, client: Any, events: list[Placed]) -> None:
    """Publish `events` the way a user of `system` would (pipelined where it can be)."""
    if system.kind == "domainbus":
        from domainbus.redis import RedisPublisher

        publisher = RedisPublisher(client, CODEC, stream=system.name, partitions=PARTITIONS)
        for start in range(0, len(events), 100_000):
            publisher.publish_batch(events[start : start + 100_000])
        return
    if system.kind == "raw":
        encode = CODEC.encode
        for start in range(0, len(events), 1000):
            pipe = client.pipeline(transaction=False)
            for event in events[start : start + 1000]:
                pipe.xadd(system.name, {b"data": encode(event)})
            pipe.execute()
        return
    from faststream.redis.message import DATA_KEY
    from faststream.redis.parser.binary import BinaryMessageFormatV1

    async def encoded() -> list[bytes]:
        return [
            await BinaryMessageFormatV1.encode(
                message={
                    "event_id": str(e.event_id),
                    "occurred_on": e.occurred_on.isoformat(),
                    "aggregate_id": e.aggregate_id,
                    "seq": e.seq,
                },
                reply_to=None,
                headers=None,
                correlation_id=str(uuid.uuid4()),
            )
            for e in events
        ]

    messages = asyncio.run(encoded())  # FastStream's own encoder: its real message format
    for start in range(0, len(messages), 1000):
        pipe = client.pipeline(transaction=False)
        for message in messages[start : start + 1000]:
            pipe.xadd(system.name, {DATA_KEY: message})
        pipe.execute()


def consumer_command(system: System, url: str, index: int) -> list[str]:
    return [
        sys.executable, str(Path(__file__)), "consume", system.kind, url, system.name,
        f"c{index}", "batch" if system.batch else "single",
    ]  # fmt: skip


def consume(kind: str, url: str, stream: str, consumer: str, mode: str) -> None:
    """A consumer process (`python benches/test_redis.py consume ...`), until SIGTERM."""
    import redis

    client = redis.Redis.from_url(url)
    ready = f"bench:ready:{stream}:{consumer}"
    if kind == "domainbus":
        from domainbus.redis import RedisWorker

        dispatcher = domainbus.Dispatcher()
        dispatcher.register_handler(Placed, lambda event: None)
        worker = RedisWorker(
            client, dispatcher, codec=CODEC, stream=stream, group="g", consumer=consumer,
            partitions=PARTITIONS, heartbeat_s=0.05, block_ms=100,
        )  # fmt: skip
        client.set(ready, 1)
        cpu = time.process_time()
        worker.run()
        client.set(f"bench:cpu:{stream}:{consumer}", time.process_time() - cpu)
    elif kind == "raw":
        decode = CODEC.decode
        try:
            client.xgroup_create(stream, "g", id="0", mkstream=True)
        except redis.ResponseError:
            pass
        client.set(ready, 1)
        cpu = time.process_time()
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        handle = lambda event: None  # noqa: E731
        while not stopping:
            reply: Any = client.xreadgroup("g", consumer, {stream: ">"}, count=1000, block=100)
            for _, entries in reply or ():
                for _, fields in entries:
                    handle(decode(fields[b"data"]))
                client.xack(stream, "g", *[entry_id for entry_id, _ in entries])
        client.set(f"bench:cpu:{stream}:{consumer}", time.process_time() - cpu)
    else:
        from faststream import FastStream
        from faststream.redis import RedisBroker, StreamSub

        broker = RedisBroker(url)
        batch = mode == "batch"
        sub = StreamSub(
            stream, group="g", consumer=consumer, last_id="0", batch=batch,
            max_records=1000 if batch else None,
        )  # fmt: skip
        if batch:

            @broker.subscriber(stream=sub)
            async def handle_batch(messages: list[dict[str, Any]]) -> None:
                pass

        else:

            @broker.subscriber(stream=sub)
            async def handle(message: dict[str, Any]) -> None:
                pass

        app = FastStream(broker)

        @app.after_startup
        async def started() -> None:
            client.set(ready, 1)
            cpu.append(time.process_time())

        @app.after_shutdown
        async def stopped() -> None:
            client.set(f"bench:cpu:{stream}:{consumer}", time.process_time() - cpu[0])

        cpu: list[float] = []
        asyncio.run(app.run())


# -- one measurement ---------------------------------------------------------------------------


def group_done(client: Any, streams: list[str], entries: int) -> bool:
    """Whether group "g" read `entries` entries of `streams` and acknowledged them all."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    read = pending = 0
    for groups in pipe.execute():
        for group in groups:
            if group["name"] == b"g":
                read += int(group["entries-read"] or 0)
                pending += int(group["pending"])
    return read >= entries and pending == 0


def consumers_ready(client: Any, system: System) -> bool:
    names = [f"bench:ready:{system.name}:c{i}" for i in range(system.workers)]
    if client.exists(*names) != len(names):
        return False
    if system.kind != "domainbus":
        return all(client.exists(s) for s in system.streams)
    holders = client.mget([f"{system.name}:g:lease:{p}" for p in range(PARTITIONS)])
    return None not in holders and len(set(holders)) == system.workers


def wait_until(condition: Callable[[], bool], what: str, processes: list[Any]) -> None:
    deadline = time.monotonic() + 600
    while not condition():
        for p in processes:
            if p.poll() is not None:
                raise RuntimeError(f"a consumer of {what} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.002)


@dataclass
class Measured:
    system: str
    events: int
    seconds: float  # publish start (or consumer start, drain) to the last acknowledgement
    publish_seconds: float
    consumer_cpu: float  # CPU seconds of the consumer processes once ready (sum)
    publish_cpu: float  # CPU seconds of this process publishing
    redis_cpu: float = 0.0  # CPU seconds of redis-server over the measurement (INFO cpu)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def measure(system: System, url: str, events: list[Placed], *, drain: bool = False) -> Measured:
    """Publish `events` to fresh streams and time until `system`'s consumers handled them."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    processes: list[subprocess.Popen[bytes]] = []

    def start_consumers() -> None:
        for i in range(system.workers):
            command = consumer_command(system, url, i)
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))

    try:
        if not drain:
            start_consumers()
            wait_until(lambda: consumers_ready(client, system), system.name, processes)
        started, cpu, server_cpu = time.perf_counter(), time.process_time(), redis_cpu(client)
        publish(system, client, events)
        publish_seconds = time.perf_counter() - started
        publish_cpu = time.process_time() - cpu
        if drain:
            started = time.perf_counter()
            start_consumers()
        entries = sum(int(client.xlen(s)) for s in system.streams)
        wait_until(lambda: group_done(client, system.streams, entries), system.name, processes)
        seconds = time.perf_counter() - started
        server_cpu = redis_cpu(client) - server_cpu
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        found = client.mget([f"bench:cpu:{system.name}:c{i}" for i in range(system.workers)])
        consumer_cpu = sum(float(c) for c in found if c is not None)
        client.close()
    return Measured(
        system.name, len(events), seconds, publish_seconds, consumer_cpu, publish_cpu, server_cpu
    )


def redis_cpu(client: Any) -> float:
    """CPU seconds redis-server used so far (user + system, INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server without persistence on a loopback port (tests/servers.py), its URL."""
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import running_redis

    with tempfile.TemporaryDirectory(prefix="domainbus-bench-redis-") as folder:
        with running_redis(Path(folder)) as server:
            yield server.url


def events_for(system: System, count: int, peer_events: int, faststream_events: int) -> int:
    """Events for `system`: the peers get fewer (they are 10-1000x slower; rates compare)."""
    if system.kind == "faststream" and not system.batch:
        return min(count, faststream_events)
    return count if system.kind == "domainbus" else min(count, peer_events)


# -- the floor: what the parts cost without domainbus ----------------------------------------------


@dataclass
class Floor:
    """CPU per event of the bench event's msgpack (msgspec alone) and of raw frame traffic."""

    encode_ns: float  # msgspec.msgpack.Encoder().encode of 1,000-event lists
    decode_ns: float  # msgspec.msgpack.Decoder(list[Placed]).decode, GC as in a worker
    xadd_ns: float  # pipelined XADDs of prebuilt frames: this process + redis-server
    read_ns: float  # XREADGROUP + XACK of those frames, undecoded: this process + redis-server
    cores: int = 2

    @property
    def total_ns(self) -> float:
        return self.encode_ns + self.decode_ns + self.xadd_ns + self.read_ns

    def line(self) -> str:
        best = self.cores * 1e9 / self.total_ns
        return (
            f"floor: msgspec encode {self.encode_ns:,.0f} ns + decode {self.decode_ns:,.0f} ns "
            f"+ raw frames XADD {self.xadd_ns:,.0f} ns + XREADGROUP/XACK {self.read_ns:,.0f} ns "
            f"= {self.total_ns:,.0f} ns of CPU an event; {self.cores} cores -> at most "
            f"{best:,.0f} events/s end to end (the 2,000,000/s target needs <= "
            f"{self.cores * 1e9 / 2_000_000:,.0f} ns)"
        )


def measure_floor(url: str, count: int = 200_000, rounds: int = 3) -> Floor:
    """The floor, best of `rounds` (process CPU time, and redis-server's from INFO cpu)."""
    import gc

    import msgspec
    import redis

    from domainbus.redis.collector import spared_collector

    events = build_events(count)
    chunks = [events[i : i + 1000] for i in range(0, count, 1000)]
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(list[Placed])
    frames = [encoder.encode(chunk) for chunk in chunks]
    del events

    def best(step: Callable[[], float]) -> float:
        return min(step() for _ in range(rounds)) / count * 1e9

    def encoding() -> float:
        cpu = time.process_time()
        for chunk in chunks:
            encoder.encode(chunk)
        return time.process_time() - cpu

    def decoding() -> float:
        cpu = time.process_time()
        for frame in frames:
            decoder.decode(frame)
        return time.process_time() - cpu

    encode_ns = best(encoding)
    chunks.clear()  # the events: only the frames are needed from here on
    gc.collect()
    with spared_collector():  # the workers' GC settings
        decode_ns = best(decoding)

    client = redis.Redis.from_url(url)
    streams = [f"floor:{p}" for p in range(PARTITIONS)]

    def xadd() -> float:
        client.flushall()
        cpu, server = time.process_time(), redis_cpu(client)
        for start in range(0, len(frames), 100):
            pipe = client.pipeline(transaction=False)
            for n, frame in enumerate(frames[start : start + 100], start):
                fields = {b"format": b"domainbus-msgpack-1", b"count": b"1000", b"events": frame}
                pipe.xadd(streams[n % PARTITIONS], fields)  # type: ignore[arg-type]
            pipe.execute()
        return time.process_time() - cpu + redis_cpu(client) - server

    def read() -> float:
        xadd()
        for stream in streams:
            client.xgroup_create(stream, "g", id="0")
        cpu, server = time.process_time(), redis_cpu(client)
        read_entries, acks = 0, []
        while read_entries < len(frames):
            pipe = client.pipeline(transaction=False)
            for stream, ids in acks:
                pipe.xack(stream, "g", *ids)
            pipe.xreadgroup("g", "c", dict.fromkeys(streams, ">"), count=2)  # type: ignore[arg-type]
            reply = pipe.execute()[-1]
            acks = [(key, [entry_id for entry_id, _ in found]) for key, found in reply]
            read_entries += sum(len(ids) for _, ids in acks)
        pipe = client.pipeline(transaction=False)
        for stream, ids in acks:
            pipe.xack(stream, "g", *ids)
        pipe.execute()
        return time.process_time() - cpu + redis_cpu(client) - server

    try:
        floor = Floor(encode_ns, decode_ns, best(xadd), best(read))
    finally:
        client.flushall()
        client.close()
    return floor


# -- pytest-benchmark ---------------------------------------------------------------------------

_RESULTS: dict[str, list[Measured]] = {}


class _Summary:
    """A plugin printing this module's tables at the end of the run."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not _RESULTS:
            return
        terminalreporter.section("domainbus Redis Streams (this run)")
        for mode, results in _RESULTS.items():
            terminalreporter.write_line(MODES[mode])
            for line in table(results):
                terminalreporter.write_line("  " + line)


@pytest.fixture(scope="module")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    pytest.importorskip("redis")
    if not request.config.pluginmanager.has_plugin("domainbus-redis-summary"):
        request.config.pluginmanager.register(_Summary(), "domainbus-redis-summary")
    with redis_server() as url:
        yield url


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("system", SYSTEMS, ids=[s.name for s in SYSTEMS])
def test_redis_streams(
    benchmark: Any,
    system: System,
    mode: str,
    redis_url: str,
    bench_events: int,
    request: pytest.FixtureRequest,
) -> None:
    if system.kind == "faststream":
        pytest.importorskip("faststream")
    quick = bool(request.config.getoption("benchmark_disable", default=False))
    if quick and mode == "drain":
        pytest.skip("the quick check runs the end-to-end mode only")
    count = events_for(system, bench_events, bench_events, 200 if quick else FASTSTREAM_EVENTS)
    events = build_events(count)
    drain = mode == "drain"
    result = benchmark.pedantic(
        measure, args=(system, redis_url, events), kwargs={"drain": drain}, rounds=1, iterations=1
    )
    if result is None:  # --benchmark-disable still runs it once
        result = measure(system, redis_url, events, drain=drain)
    assert result.events == count
    benchmark.extra_info["events_per_second"] = result.rate
    _RESULTS.setdefault(mode, []).append(result)


def table(results: list[Measured]) -> list[str]:
    """One line per system: events/s, and the ratios to FastStream's modes and the raw loop."""
    by_name = {r.system: r for r in results}
    lines = []
    for r in results:
        ratios = [
            f"{r.rate / by_name[other].rate:6.1f}x {other}"
            + (
                f" ({by_name[other].consumer_cpu / by_name[other].events / cpu:.1f}x less "
                "consumer CPU an event)"
                if (cpu := r.consumer_cpu / r.events) > 0 and by_name[other].consumer_cpu > 0
                else ""
            )
            for other in ("faststream-batch", "faststream", "raw")
            if other in by_name and other != r.system
        ]
        lines.append(
            f"{r.system:17} {r.events:>10,} events {r.seconds:7.2f} s {r.rate:>12,.0f} events/s "
            f"(publishing {r.publish_seconds:.2f} s; CPU per event: publish "
            f"{r.publish_cpu / r.events * 1e9:,.0f} ns, consume "
            f"{r.consumer_cpu / r.events * 1e9:,.0f} ns, redis {r.redis_cpu / r.events * 1e9:,.0f} "
            f"ns)  " + ", ".join(ratios)
        )
    return lines


# -- the side-by-side runner ----------------------------------------------------------------------


def loop_ns() -> float:
    """How busy the machine is: ns per iteration of a trivial Python loop."""
    started, total = time.perf_counter(), 0
    for i in range(2_000_000):
        total += i
    return (time.perf_counter() - started) / 2_000_000 * 1e9


def main(argv: list[str]) -> int:
    if argv[:1] == ["consume"]:
        consume(*argv[1:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="domainbus events")
    parser.add_argument("--peer-events", type=int, default=PEER_EVENTS, help="raw, batch mode")
    parser.add_argument("--faststream-events", type=int, default=FASTSTREAM_EVENTS)
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS))
    parser.add_argument("--mode", choices=("e2e", "drain", "both"), default="both")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    wanted = args.systems.split(",")
    systems = [s for s in SYSTEMS if s.name in wanted]
    modes = ("e2e", "drain") if args.mode == "both" else (args.mode,)
    results: dict[str, list[Measured]] = {}
    print(
        f"machine: a pure-Python `s += i` loop takes {loop_ns():.0f} ns an iteration "
        "(~35 ns when idle); load average " + " ".join(map(str, os.getloadavg()))
    )
    with redis_server() as url:
        floor = measure_floor(url)
        print(floor.line(), flush=True)
        for mode in modes:
            for system in systems:
                count = events_for(system, args.events, args.peer_events, args.faststream_events)
                result = measure(system, url, build_events(count), drain=mode == "drain")
                results.setdefault(mode, []).append(result)
                print(mode, table([result])[0], flush=True)
    print(
        f"\nmachine afterwards: {loop_ns():.0f} ns a loop iteration; load average "
        + " ".join(map(str, os.getloadavg()))
    )
    for mode in modes:
        print(f"\n{MODES[mode]}")
        for line in table(results[mode]):
            print(line)
    print(f"\n{floor.line()}")
    if args.json:
        found: dict[str, Any] = {mode: [r.__dict__ for r in rs] for mode, rs in results.items()}
        found["floor"] = floor.__dict__
        Path(args.json).write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Replaying an event log (issue 5): `domainbus run` against msgspec plus the handler floor.

A log of `--bench-events` demo events (default 200,000; the README figure uses 1,000,000) is
written once with `domainbus generate`, then replayed through a dispatcher with three no-op
handlers per event type (`domainbus.demo.noop_dispatcher`, the Rust backend when built).
Systems, all checked for the exact count before they are timed:

- cli-run: the whole `domainbus run domainbus.demo:noop_dispatcher FILE` command, in-process
  (import, codec, decode, dispatch, summary);
- codec-loop: `codec.iter_indexed_batches` + `dispatch_batch`, the command's inner loop;
- floor: msgspec decoding the same frames with one reused Decoder, plus each of the three
  handlers mapped over every decoded batch with `collections.deque(map(h, events), maxlen=0)`;
- decode-only: the msgspec part of the floor alone.

Group "replay" times each system on its own; group "replay-interleaved" runs all four in every
round (fairer on a shared machine) and its medians give the ratios printed at the end.
Target: cli-run within 1.3x of floor. Run:
`pytest benches/test_replay.py --benchmark-group-by=group [--bench-events 1000000]`.
"""

from __future__ import annotations

import collections
import contextlib
import io
import statistics
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Union

import msgspec
import pytest

from domainbus import cli, demo
from domainbus.codec import MAGIC

ROUNDS = 7


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, bench_events: int) -> Path:
    path = tmp_path_factory.mktemp("replay") / "events.bin"
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["generate", str(path), "--count", str(bench_events)])
    assert status == 0
    return path


INTERLEAVED: dict[str, list[float]] = {}  # system -> seconds per round, round-robin


@pytest.fixture(scope="module", autouse=True)
def report_ratio(request: pytest.FixtureRequest, bench_events: int) -> Iterator[None]:
    """After the module: each system against the floor, from the interleaved rounds."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is None or not INTERLEAVED.get("floor"):
        return
    floor = statistics.median(INTERLEAVED["floor"])
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line(f"replay of {bench_events:,} events, interleaved rounds, medians:")
        for system, seconds in INTERLEAVED.items():
            median = statistics.median(seconds)
            reporter.write_line(
                f"  {system:<12} {bench_events / median:>12,.0f} events/s  "
                f"{median / floor:.3f}x floor"
            )
        reporter.write_line("  target: cli-run <= 1.3x floor")


def decode_frames(path: Path, consume: Callable[[list[Any]], object]) -> int:
    """msgspec alone: read each frame and decode it with one reused Decoder."""
    decoder = msgspec.msgpack.Decoder(list[Union[demo.EVENT_TYPES]])  # type: ignore[valid-type]  # noqa: UP007
    count = 0
    with open(path, "rb") as file:
        file.read(len(MAGIC))
        while prefix := file.read(4):
            events = decoder.decode(file.read(struct.unpack("<I", prefix)[0]))
            consume(events)
            count += len(events)
    return count


def call_handlers(events: list[Any]) -> None:
    for handler in demo.NOOP_HANDLERS:
        collections.deque(map(handler, events), maxlen=0)


def run_command(path: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = cli.main(["run", "domainbus.demo:noop_dispatcher", str(path)])
    assert status == 0
    return int(out.getvalue().split()[1].replace(",", ""))


def codec_loop(path: Path) -> int:
    dispatch_batch = demo.noop_dispatcher().dispatch_batch
    calls = 0
    for batch in demo.codec.iter_indexed_batches(path):
        calls += dispatch_batch(iter(batch.events))
    return calls


def systems(log: Path, events: int) -> dict[str, tuple[Callable[[], int], int]]:
    """Each system's job and the count it must return (events, or handler calls)."""
    return {
        "cli-run": (lambda: run_command(log), events),
        "codec-loop": (lambda: codec_loop(log), 3 * events),
        "floor": (lambda: decode_frames(log, call_handlers), events),
        "decode-only": (lambda: decode_frames(log, lambda batch: None), events),
    }


@pytest.mark.benchmark(group="replay")
@pytest.mark.parametrize("system", ["cli-run", "codec-loop", "floor", "decode-only"])
def test_replay(benchmark: Any, log: Path, bench_events: int, system: str, ledger: Any) -> None:
    run, expected = systems(log, bench_events)[system]
    assert run() == expected  # each system does the whole job before it is timed
    result = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    assert result == expected
    ledger.record(f"replay:{system}", benchmark, bench_events)


@pytest.mark.benchmark(group="replay-interleaved")
def test_replay_interleaved(benchmark: Any, log: Path, bench_events: int) -> None:
    """All four systems once per round, so a shared machine's load hits them alike; the
    per-system medians feed the ratios printed after the module."""
    jobs = systems(log, bench_events)
    INTERLEAVED.clear()

    def one_round() -> None:
        for system, (run, expected) in jobs.items():
            started = time.perf_counter()
            result = run()
            INTERLEAVED.setdefault(system, []).append(time.perf_counter() - started)
            assert result == expected

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1)
    for seconds in INTERLEAVED.values():
        del seconds[0]  # the warm-up round

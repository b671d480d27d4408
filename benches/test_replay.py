"""Replaying an event log (issue 5): `domainbus run` against msgspec plus the handler floor.

A log of `--bench-events` demo events (default 200,000; the README figure uses 1,000,000) is
written once with `domainbus generate`, then replayed through a dispatcher with three no-op
handlers per event type (`domainbus.demo.noop_dispatcher`, the Rust backend when built).
Compared side by side in one run (group "replay"):

- cli-run: the whole `domainbus run domainbus.demo:noop_dispatcher FILE` command, in-process
  (import, codec, decode, dispatch, summary);
- codec-loop: `codec.iter_indexed_batches` + `dispatch_batch`, the command's inner loop;
- floor: msgspec decoding the same frames with one reused Decoder, plus each of the three
  handlers mapped over every decoded batch with `collections.deque(map(h, events), maxlen=0)`;
- decode-only: the msgspec part of the floor alone.

Target: cli-run within 1.3x of floor. Run: `pytest benches/test_replay.py
--benchmark-group-by=group [--bench-events 1000000]`.
"""

from __future__ import annotations

import collections
import contextlib
import io
import struct
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


@pytest.fixture(scope="module", autouse=True)
def report_ratio(request: pytest.FixtureRequest, ledger: Any) -> Iterator[None]:
    """After the module: print cli-run / floor and codec-loop / floor (medians, this run)."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    floor = ledger.medians.get("replay:floor")
    if reporter is None or floor is None:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for system in ("cli-run", "codec-loop", "decode-only"):
            median = ledger.medians.get(f"replay:{system}")
            if median is not None:
                rate = f"{1 / median:,.0f} events/s"
                reporter.write_line(f"replay {system} / floor: {median / floor:.3f} ({rate})")
        reporter.write_line(f"replay floor: {1 / floor:,.0f} events/s (target: cli-run <= 1.3x)")


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


@pytest.mark.benchmark(group="replay")
@pytest.mark.parametrize("system", ["cli-run", "codec-loop", "floor", "decode-only"])
def test_replay(benchmark: Any, log: Path, bench_events: int, system: str, ledger: Any) -> None:
    runs: dict[str, tuple[Callable[[], int], int]] = {
        "cli-run": (lambda: run_command(log), bench_events),
        "codec-loop": (lambda: codec_loop(log), 3 * bench_events),
        "floor": (lambda: decode_frames(log, call_handlers), bench_events),
        "decode-only": (lambda: decode_frames(log, lambda events: None), bench_events),
    }
    run, expected = runs[system]
    assert run() == expected  # each system does the whole job before it is timed
    result = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    assert result == expected
    ledger.record(f"replay:{system}", benchmark, bench_events)
    if benchmark.stats:
        benchmark.extra_info["events_per_s"] = bench_events / benchmark.stats.stats.median

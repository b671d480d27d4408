"""Every workload of `domainbus bench` on every system, as pytest-benchmark tests.

Grouped per workload (`--benchmark-group-by=group`), so `pytest benches --benchmark-compare`
tracks regressions. A system whose library is not installed, that cannot express a workload,
or whose domainbus API has not landed is skipped with the reason. Each benchmark first checks
that the system made exactly the expected handler calls.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from domainbus.bench.cli import add_arguments, run
from domainbus.bench.handlers import noop_handlers
from domainbus.bench.runner import check, measure, prepared, skip_reason
from domainbus.bench.systems import SYSTEMS, Bus, NotApplicable, System, Wiring
from domainbus.bench.workloads import WORKLOADS, Workload

CASES = [
    pytest.param(workload, system, id=f"{workload.name}-{system.name}")
    for workload in WORKLOADS  # workload-major: the events cache holds one workload at a time
    for system in SYSTEMS
]


@pytest.mark.parametrize(("workload", "system"), CASES)
def test_workload(
    benchmark: Any,
    events_of: Callable[[Workload], list[Any]],
    workload: Workload,
    system: System,
) -> None:
    reason = skip_reason(workload, system)
    if reason is not None:
        pytest.skip(reason)
    events = events_of(workload)
    benchmark.group = f"workload: {workload.name}"
    try:
        failure = check(workload, system, events)
    except NotApplicable as exc:
        pytest.skip(str(exc))
    assert failure is None, failure
    handlers = noop_handlers(workload.slots, is_async=workload.is_async)
    with prepared(workload, system, events, handlers) as run:
        run()
        benchmark(run)
    benchmark.extra_info["events"] = len(events)


def test_check_catches_a_system_that_routes_wrongly() -> None:
    """The correctness check is not a formality: exact-type routing under a hierarchy fails it."""
    (hierarchy,) = [w for w in WORKLOADS if w.name == "hierarchy"]
    (article,) = [s for s in SYSTEMS if s.name == "article"]
    failure = check(hierarchy, article, hierarchy.build_events(100))
    assert failure is not None
    assert failure.startswith("wrong handler calls: 0 made, 300 expected")


def test_domainbus_bench_command_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`domainbus bench` with a few events: table, JSON and chart, so the command cannot rot."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--events", "300", "--rounds", "1", "--json", str(json_path)]
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    if has_matplotlib:
        argv += ["--plot", str(png_path)]
    assert run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "| 1-handler  | domainbus-rust |" in out
    document = msgspec.json.decode(json_path.read_bytes())
    assert document["events"] == 300
    assert {"python", "cpu", "domainbus_version"} <= document["environment"].keys()
    timed = [row for row in document["results"] if row["status"] == "ok"]
    assert {row["workload"] for row in timed} >= {"1-handler", "3-handlers", "single", "hierarchy"}
    assert all(row["status"] != "failed" for row in document["results"])
    if has_matplotlib:
        assert png_path.read_bytes().startswith(b"\x89PNG")


def test_a_system_that_raises_is_reported_and_the_others_still_run() -> None:
    @contextlib.contextmanager
    def broken(wiring: Wiring) -> Iterator[Bus]:
        def publish(event: Any) -> None:
            raise RuntimeError("boom")

        def publish_many(events: Sequence[Any]) -> None:
            for event in events:
                publish(event)

        yield Bus(publish=publish, publish_many=publish_many)

    (one_handler,) = [w for w in WORKLOADS if w.name == "1-handler"]
    (reference,) = [s for s in SYSTEMS if s.name == "domainbus-rust"]
    outcomes = measure(
        [one_handler], [reference, System("broken", "raises", broken, "exact")], events=50, rounds=1
    )
    assert [(o.system, o.status) for o in outcomes] == [
        ("domainbus-rust", "ok"),
        ("broken", "failed"),
    ]
    assert outcomes[1].reason == "raised RuntimeError('boom')"

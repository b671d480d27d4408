"""The core benchmark of issue 2: 10 event classes, 1 and 3 no-op handlers per class.

Compared in one run: the Rust `dispatch_batch`, the Rust `dispatch` in a Python loop, the pure
backend (both calls), the article's dispatcher, and the floor (each handler mapped over the
events with `collections.deque(map(handler, events), maxlen=0)`: the calls with no routing).
Each benchmark first checks that the system made exactly the expected handler calls. The
ratios against the targets are printed at the end of the run (see conftest.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from domainbus.bench.handlers import noop_handlers
from domainbus.bench.runner import check, prepared
from domainbus.bench.systems import by_name
from domainbus.bench.workloads import Mode, Workload
from domainbus.bench.workloads import by_name as workload

# variant -> (system, how the events are published)
VARIANTS: dict[str, tuple[str, Mode]] = {
    "rust-batch": ("domainbus-rust", "batch"),
    "rust-loop": ("domainbus-rust", "single"),
    "pure-batch": ("domainbus-pure", "batch"),
    "pure-loop": ("domainbus-pure", "single"),
    "article": ("article", "batch"),  # the article has no batch call: its dispatch in a loop
    "floor": ("floor", "batch"),
}
WORKLOADS = {1: workload(["1-handler"])[0], 3: workload(["3-handlers"])[0]}


@pytest.mark.parametrize("handlers", [1, 3], ids=["1h", "3h"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dispatch(
    benchmark: Any,
    ledger: Any,
    events_of: Callable[[Workload], list[Any]],
    handlers: int,
    variant: str,
) -> None:
    system_name, mode = VARIANTS[variant]
    (system,) = by_name([system_name])
    base = WORKLOADS[handlers]
    events = events_of(base)
    load = dataclasses.replace(base, mode=mode)
    benchmark.group = f"dispatch: {handlers} handler{'s' if handlers > 1 else ''}"
    assert check(load, system, events) is None
    with prepared(load, system, events, noop_handlers(load.slots)) as run:
        run()
        benchmark(run)
    ledger.record(f"{handlers}h:{variant}", benchmark, len(events))

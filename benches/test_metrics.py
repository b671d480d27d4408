"""What per-handler metrics cost (rule 16): `dispatch_batch` with metrics on against off.

The workload of benches/test_dispatch.py (10 event classes, 1 and 3 no-op handlers per class,
one batch), on both backends, with `Dispatcher(metrics=True)` and without; the ratios against
the issue's target (on / off <= 1.3) are printed at the end of the run (see conftest.py). A
dispatcher with metrics switched on and off again is measured too: off must cost nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from domainbus.bench.handlers import noop_handlers
from domainbus.bench.workloads import Workload
from domainbus.bench.workloads import by_name as workload

WORKLOADS = {1: workload(["1-handler"])[0], 3: workload(["3-handlers"])[0]}
BACKENDS = {"rust": "domainbus.rust", "pure": "domainbus.pure"}
STATES = ("off", "on", "toggled")  # toggled: enable_metrics() then disable_metrics()


def dispatcher_for(backend: str, load: Workload, state: str) -> Any:
    module = (
        pytest.importorskip(BACKENDS[backend])
        if backend == "rust"
        else importlib.import_module(BACKENDS[backend])
    )
    dispatcher = module.Dispatcher(metrics=state == "on")
    if state == "toggled":
        dispatcher.enable_metrics()
        dispatcher.disable_metrics()
    for event_type, handler in load.wiring(noop_handlers(load.slots)).routes:
        dispatcher.register_handler(event_type, handler)
    return dispatcher


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("handlers", [1, 3], ids=["1h", "3h"])
def test_metrics_cost(
    benchmark: Any,
    ledger: Any,
    events_of: Callable[[Workload], list[Any]],
    handlers: int,
    backend: str,
    state: str,
) -> None:
    load = WORKLOADS[handlers]
    events = events_of(load)
    dispatcher = dispatcher_for(backend, load, state)
    benchmark.group = f"metrics: {handlers} handler{'s' if handlers > 1 else ''}"
    assert dispatcher.dispatch_batch(events) == handlers * len(events)
    if state == "on":
        assert sum(r["calls"] for r in dispatcher.metrics()) == handlers * len(events)
    benchmark(dispatcher.dispatch_batch, events)
    ledger.record(f"metrics:{handlers}h:{backend}-{state}", benchmark, len(events))

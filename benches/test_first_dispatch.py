"""First dispatch of a new event class (issue 10, item 9): its cost must not grow with the
number of classes already cached. Measured side by side in one run, on both backends: the
median cost of a first dispatch with few classes cached and with nearly the cache limit (4,096)
cached, as a ratio (it was about 20x on the Rust backend, whose cache was copied per class)."""

from __future__ import annotations

import importlib
import statistics
import time
from typing import Any

import pytest


def noop(event: object) -> None:
    pass


def first_dispatch_cost(make_dispatcher: Any, cached: int, samples: int = 200) -> float:
    class Base:
        pass

    d = make_dispatcher()
    d.register_handler(Base, noop)
    for _ in range(cached):
        d.dispatch(type("Warm", (Base,), {})())
    fresh = [type("Fresh", (Base,), {})() for _ in range(samples)]
    costs = []
    for event in fresh:
        start = time.perf_counter()
        d.dispatch(event)
        costs.append(time.perf_counter() - start)
    return statistics.median(costs)


@pytest.mark.parametrize("backend", ["pure", "rust"])
def test_first_dispatch_of_a_new_class_is_flat(backend: str) -> None:
    make_dispatcher = importlib.import_module(f"domainbus.{backend}").Dispatcher
    few = first_dispatch_cost(make_dispatcher, 10)
    many = first_dispatch_cost(make_dispatcher, 3_800)
    ratio = many / few
    print(f"first dispatch: {few * 1e6:.2f} us with 10 cached, {many * 1e6:.2f} us with 3,800")
    assert ratio < 3, f"first dispatch {ratio:.1f}x slower with 3,800 classes cached"

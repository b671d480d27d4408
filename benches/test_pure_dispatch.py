"""Issue 12's benchmark: the pure backend as a real fallback, side by side with the article.

One run, 10 event classes with one no-op handler each (the "1-handler" workload), 200,000
events (2,000 under `--benchmark-disable`; `--bench-events N` sets it). Variants, each timed in
turn round after round so that a busy machine slows them all alike:

- article: the article's 15-line dispatcher (`domainbus.bench.systems.EventDispatcher`), its
  `dispatch` called in a Python loop (it has no batch call);
- pure-dispatch: `domainbus.pure.Dispatcher().dispatch` in the same loop;
- pure-batch: one `domainbus.pure.Dispatcher().dispatch_batch(events)`;
- zope.event, for scale (`zope.event.classhandler`, MRO routing like domainbus), if installed.

Targets: pure-dispatch / article <= 2, pure-batch / article <= 1.5. Every variant is first
checked to make exactly the expected handler calls. The ratios are printed (no timed
assertion: this machine is shared). Run: `pytest benches/test_pure_dispatch.py -s`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from domainbus.bench.handlers import noop_handlers
from domainbus.bench.runner import check, prepared
from domainbus.bench.systems import by_name
from domainbus.bench.workloads import Mode
from domainbus.bench.workloads import by_name as workload_named

WORKLOAD = workload_named(["1-handler"])[0]
# variant -> (system, how the events are published)
VARIANTS: dict[str, tuple[str, Mode]] = {
    "article": ("article", "batch"),  # the article has no batch call: its dispatch in a loop
    "pure-dispatch": ("domainbus-pure", "single"),
    "pure-batch": ("domainbus-pure", "batch"),
    "zope.event": ("zope.event", "single"),
}
TARGETS = (("pure-dispatch", 2.0), ("pure-batch", 1.5))  # (variant, bound on variant / article)


def _time(run: Callable[[], object], count: int) -> float:
    """Nanoseconds per event of one `run()`, with the garbage collector paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - start) / count
    finally:
        if enabled:
            gc.enable()


def _medians(events: Sequence[Any], rounds: int) -> dict[str, float]:
    """Each available variant checked, then timed in turn for `rounds` rounds: its median."""
    times: dict[str, list[float]] = {}
    with_runs = []
    for variant, (system_name, mode) in VARIANTS.items():
        (system,) = by_name([system_name])
        if system.missing() is not None:
            continue
        load = dataclasses.replace(WORKLOAD, mode=mode)
        assert check(load, system, events) is None, variant
        with_runs.append((variant, load, system))
    runs: dict[str, Callable[[], object]] = {}
    with contextlib.ExitStack() as stack:  # every variant stays wired for the whole run
        for variant, load, system in with_runs:
            runs[variant] = stack.enter_context(
                prepared(load, system, events, noop_handlers(load.slots))
            )
            runs[variant]()  # warm: caches filled, code specialised
            times[variant] = []
        for _ in range(rounds):
            for variant, run in runs.items():
                times[variant].append(_time(run, len(events)))
    return {variant: statistics.median(t) for variant, t in times.items()}


def test_pure_dispatch_ratios(capsys: pytest.CaptureFixture[str], bench_events: int) -> None:
    events = WORKLOAD.build_events(bench_events)
    rounds = 5 if bench_events <= 2_000 else 9
    medians = _medians(events, rounds)
    article = medians["article"]
    lines = [
        f"{variant:>14}: {median:7.1f} ns/event, {median / article:5.2f}x article"
        for variant, median in medians.items()
    ]
    for variant, bound in TARGETS:
        ratio = medians[variant] / article
        verdict = "met" if ratio <= bound else f"MISSED by {ratio / bound - 1:.0%}"
        lines.append(f"{variant} / article: {ratio:.3f} (target <= {bound}) {verdict}")
    with capsys.disabled():
        print(
            f"\ndomainbus pure backend ({len(events):,} events over 10 classes, 1 no-op handler"
            f" each; interleaved, median of {rounds} rounds, this run)"
        )
        for line in lines:
            print(line)

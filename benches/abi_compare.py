"""Per-handler-call cost of the extension built different ways (per-version vs abi3), side by side.

Each BUILD is a directory to put on PYTHONPATH that holds `domainbus/` with one build of the
extension (benches/abi_builds.sh makes them under target/abi/). Every round runs each build once
in a fresh interpreter, in a rotating order, so noise on a shared machine falls on all alike; a
run times `Dispatcher.dispatch_batch` over the same events with 1 and with 3 no-op handlers per
event class (GC paused, best of a few repeats, in CPU time of the thread so that other
processes on a shared machine weigh less) plus the floor `deque(map(handler, events))`.
The report gives ns per event (median over the rounds), each build's ratio to the first build
(median of the per-round ratios), and the cost of one extra handler call ((3 handlers - 1
handler) / 2): the part that vectorcall speeds up. The floor does not depend on the build; its
ratio shows how much noise the run had.

    python3 benches/abi_compare.py --python python3.12 \\
        target/abi/per-version-cp312 target/abi/abi3-py311 target/abi/abi3-py312
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs in the child interpreter with one build on PYTHONPATH; prints one JSON object.
CHILD = r"""
import collections, gc, json, sys, time
from pathlib import Path
import domainbus
from domainbus import Dispatcher, DomainEvent

build = Path(sys.argv[1]).resolve()
core = sys.modules["domainbus._core"]
assert domainbus.BACKEND == "rust", domainbus.BACKEND
assert Path(core.__file__).resolve().is_relative_to(build), (core.__file__, build)

class A(DomainEvent):
    n: int
class B(DomainEvent):
    n: int
class C(DomainEvent):
    n: int
class D(DomainEvent):
    n: int

count, repeats = int(sys.argv[2]), int(sys.argv[3])
events = [(A, B, C, D)[i % 4](n=i) for i in range(count)]
gc.freeze()  # the events stay out of the collector's generations

def noop(event):
    return None

def best(run):
    run()  # warm-up
    times = []
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.thread_time_ns()
            run()
            times.append(time.thread_time_ns() - start)
    finally:
        gc.enable()
    return min(times) / count

result = {"extension": Path(core.__file__).name, "python": sys.version.split()[0]}
result["floor"] = best(lambda: collections.deque(map(noop, events), maxlen=0))
for handlers in (1, 3):
    dispatcher = Dispatcher()
    for cls in (A, B, C, D):
        for _ in range(handlers):
            dispatcher.register_handler(cls, lambda e: None)
    assert dispatcher.dispatch_batch(events[:8]) == 8 * handlers
    result[f"{handlers}h"] = best(lambda: dispatcher.dispatch_batch(events))
print(json.dumps(result))
"""

WORKLOADS = ("1h", "3h", "per extra handler", "floor")


def run_once(python: str, build: Path, events: int, repeats: int) -> dict[str, float | str]:
    env = {**os.environ, "PYTHONPATH": str(build), "DOMAINBUS_BACKEND": "rust"}
    env["PYTHONHASHSEED"] = "0"
    done = subprocess.run(
        [python, "-c", CHILD, str(build), str(events), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{build} with {python} failed:\n{done.stderr.strip()}")
    result: dict[str, float | str] = json.loads(done.stdout)
    result["per extra handler"] = (float(result["3h"]) - float(result["1h"])) / 2
    return result


def paired_ratios(
    runs: list[dict[str, float | str]], base: list[dict[str, float | str]], workload: str
) -> list[float]:
    """Round by round, a build's time over the first build's on `workload`."""
    return [float(s[workload]) / float(r[workload]) for s, r in zip(runs, base, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", type=Path, metavar="BUILD")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per round (best)")
    args = parser.parse_args()
    for build in args.builds:
        if not (build / "domainbus").is_dir():
            parser.error(f"{build} holds no domainbus/ (make it with benches/abi_builds.sh)")

    samples: dict[Path, list[dict[str, float | str]]] = {b: [] for b in args.builds}
    for round_ in range(args.rounds):
        shift = round_ % len(args.builds)
        for build in args.builds[shift:] + args.builds[:shift]:
            samples[build].append(run_once(args.python, build, args.events, args.repeats))

    first = samples[args.builds[0]][0]
    print(
        f"CPython {first['python']}, dispatch_batch of {args.events:,} events (4 classes), "
        f"no-op handlers; ns per event, median of {args.rounds} interleaved rounds"
    )
    medians = {
        b: {w: statistics.median(float(s[w]) for s in samples[b]) for w in WORKLOADS}
        for b in args.builds
    }
    base = samples[args.builds[0]]
    # the ratio is paired by round (each round runs every build once, close together in time),
    # so that drift in the machine's speed between rounds cancels out
    ratios = {
        b: {w: statistics.median(paired_ratios(samples[b], base, w)) for w in WORKLOADS}
        for b in args.builds
    }
    width = max(len(b.name) for b in args.builds) + 2
    print(f"{'build':<{width}}{'extension':<40}" + "".join(f"{w:>24}" for w in WORKLOADS))
    for build in args.builds:
        cells = [f"{medians[build][w]:>14.1f} ({ratios[build][w]:.2f}x)" for w in WORKLOADS]
        name = str(samples[build][0]["extension"])
        print(f"{build.name:<{width}}{name:<40}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()

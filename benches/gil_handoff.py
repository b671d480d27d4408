"""How long a thread waits for the GIL while another runs a batch of C handlers.

`PYTHONPATH=$PWD/python python3 benches/gil_handoff.py [--events N] [--batches K]`

A handler written in C (`deque.append`) never enters the eval loop, so only the dispatch loop
can let another thread in. For each backend: K batches of N events, each with a thread that
starts waiting for the GIL as the batch begins; prints the median and worst wait, and how many
threads only got the GIL once the batch was over. Not a test: the waits depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import threading
import time
from types import ModuleType

from domainbus import pure, rust


def one_batch(backend: ModuleType, events: int) -> tuple[float, float, bool]:
    """(wait for the GIL in ms, batch length in ms, whether the wait outlasted the batch)."""
    seen: collections.deque[int] = collections.deque(maxlen=1)
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(int, seen.append)
    go = threading.Event()
    woke: list[float] = []

    def other() -> None:
        go.wait()
        woke.append(time.perf_counter())

    thread = threading.Thread(target=other)
    thread.start()
    start = time.perf_counter()
    go.set()
    dispatcher.dispatch_batch(range(events))
    end = time.perf_counter()
    thread.join()
    return (woke[0] - start) * 1e3, (end - start) * 1e3, woke[0] >= end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    for name, backend in (("rust", rust), ("pure", pure)):
        events = args.events if name == "rust" else args.events // 10  # pure is ~10x slower
        runs = [one_batch(backend, events) for _ in range(args.batches)]
        waits = [wait for wait, _, _ in runs]
        print(
            f"{name}: {events:,} events a batch ({statistics.median(b for _, b, _ in runs):.0f} ms)"
            f", wait for the GIL: median {statistics.median(waits):.1f} ms, worst "
            f"{max(waits):.1f} ms; {sum(after for _, _, after in runs)} of {len(runs)} threads "
            "only got it after the batch"
        )


if __name__ == "__main__":
    main()

"""Instruction counts of the Rust `dispatch(event)` entry, for callgrind (repeatable, unlike time).

Workloads: "fast", 10 event classes whose `hot_slots` slots all differ (every lookup hits a
class's own slot); "collide", two classes whose slots are the same (the second takes the next
slot: rust/dispatch_loop.rs `HOT_PROBES`). One no-op handler each. Run, with the interpreter's real
binary (not a pyenv shim), and divide "Collected" by N + 100:

    PYTHONPATH=$PWD/python valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect='*dispatch_fastcall*' python3 benches/callgrind_single_dispatch.py fast N
"""

from __future__ import annotations

import sys
from typing import Any

from domainbus import rust


def slot(cls: type) -> int:
    """The class's own slot (rust/dispatch_loop.rs `hot_slot`, 256 slots)."""
    return (((id(cls) >> 4) * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> 56


def classes_for(workload: str) -> tuple[list[type], list[type]]:
    """(the classes dispatched, every class made: kept alive so addresses stay taken)."""
    wanted = 10 if workload == "fast" else 2
    made: list[type] = []
    by_slot: dict[int, list[type]] = {}
    while True:
        cls = type("Event", (), {"__slots__": ()})
        made.append(cls)
        by_slot.setdefault(slot(cls), []).append(cls)
        if workload == "fast" and len(by_slot) == wanted:
            return [group[0] for group in by_slot.values()], made
        if workload == "collide" and len(by_slot[slot(cls)]) == wanted:
            return by_slot[slot(cls)], made


def noop(event: Any) -> None:
    pass


def main(workload: str, count: int) -> None:
    classes, _made = classes_for(workload)
    d = rust.Dispatcher()
    for cls in classes:
        d.register_handler(cls, noop)
    events = [classes[i % len(classes)]() for i in range(count + 100)]
    dispatch = d.dispatch
    for event in events:
        dispatch(event)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

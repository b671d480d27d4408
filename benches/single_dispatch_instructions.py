"""Issue 18's ratios counted in instructions (valgrind's callgrind), not timed: repeatable on a
busy shared machine where the wall-clock ratios of `test_single_dispatch.py` drift by 30%.

Each variant of `test_single_dispatch.py` runs in its own process under callgrind twice, over
20,000 and 120,000 events; the difference divided by 100,000 is its cost per event (start-up
and event building cancel out, except the building of the extra events, which the "loop"
variant measures and every figure below has subtracted).

    PYTHONPATH=$PWD/python python3 benches/single_dispatch_instructions.py   # ~1 minute idle
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 20_000, 120_000
RUNNER = """
import sys
sys.path.insert(0, {here!r})
from test_single_dispatch import build, make_events
run = build(sys.argv[1], make_events(int(sys.argv[2])), None)
run()
"""


def instructions(variant: str, events: int) -> int:
    """Instructions callgrind counts for one process running `variant` over `events`."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-c", RUNNER.format(here=str(HERE)), variant, str(events),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total for {variant!r}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_event(variant: str) -> float:
    return (instructions(variant, LARGE) - instructions(variant, SMALL)) / (LARGE - SMALL)


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from test_single_dispatch import TARGETS, VARIANTS, c_floor

    loop = per_event("loop")
    cost = {"loop": 0.0} | {v: per_event(v) - loop for v in VARIANTS if v != "loop"}
    print(f"instructions per event above the bare loop ({loop:,.0f} for the loop and the events)")
    for variant, count in cost.items():
        print(f"{variant:>32}: {count:7,.0f}")
    for numerator, denominator, bound in TARGETS:
        ratio = cost[numerator] / cost[denominator]
        verdict = "met" if ratio <= bound else f"MISSED by {ratio / bound - 1:.0%}"
        print(f"{numerator} / {denominator}: {ratio:.3f} (<= {bound}) {verdict}")
    floor = c_floor(cost)
    print(
        f"C floor, 3 handlers: {floor:,.0f} = {floor / cost['direct, 3 handlers']:.2f}x direct, "
        f"3 handlers; rust dispatch, 3 handlers / C floor: "
        f"{cost['rust dispatch, 3 handlers'] / floor:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

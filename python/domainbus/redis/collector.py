"""`spared_collector()`: the garbage collector's settings while a worker runs its loop.

The loop's garbage is short-lived (each frame's events are freed, by reference counting, once
dispatched) but plentiful: decoding a 1,000-event frame allocates about 2,000 tracked objects
(the events and their UUIDs), so with the default threshold (700) the youngest generation is
collected about three times a frame, and each collection promotes the frame still being
built. Two changes, both undone at the end:

- `gc.freeze()` after a `gc.collect()`: the start-up objects (modules, the dispatcher, the
  client) are no longer walked by every older-generation collection (2 workers ran at
  1.2-2.0M instead of 2.1-2.65M events/s without it in a prototype);
- the youngest generation's threshold raised to `YOUNG_THRESHOLD` allocations (unless it is
  set higher already): a drain of the bench's events took 4,950 instead of 5,770
  instructions an event (callgrind, one worker). Reference cycles a handler leaves behind
  are still collected, later.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "spared_collector"]

YOUNG_THRESHOLD = 100_000


@contextmanager
def spared_collector() -> Iterator[None]:
    """Freeze the objects alive now and collect the youngest generation less often (see the
    module doc); nothing changes when something else froze objects already."""
    if gc.get_freeze_count() != 0:
        yield
        return
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        if gc.get_threshold()[0] == max(thresholds[0], YOUNG_THRESHOLD):
            gc.set_threshold(*thresholds)
        gc.unfreeze()

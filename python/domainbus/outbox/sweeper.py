"""The sweeper: deletes delivered outbox rows that no commit deleted soon enough.

A unit of work delivers its events right after its commit and leaves its rows to be deleted by
the next commit on the outbox (one transaction per unit of work instead of two). When no such
commit comes, the rows would stay claimed until their lease ran out, and another process's relay
would then take them for abandoned and deliver them a second time. So each outbox holding such
rows is watched by one daemon thread per process, which deletes them once they have waited
`sweep_delay(lease)` (a quarter of the lease, at most a second), through a connection the user's
thread is not using at that moment (`_sweep` in each store says how), and again at interpreter
exit. A busy outbox's next commit takes them first and the sweeper finds nothing to do.

Watched outboxes are held by weak references: an outbox dropped without `close()` is not kept
alive. A forked child starts with nothing watched (the parent's connections are not its own).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from typing import Protocol

__all__ = ["Sweepable", "sweep_delay", "watch"]

logger = logging.getLogger("domainbus.outbox")

_MIN_DELAY = 0.01  # seconds; a lease of 0 voids every claim at once, held rows included
_MAX_DELAY = 1.0


class Sweepable(Protocol):
    """An outbox whose delivered rows the sweeper can delete."""

    @property
    def sweep_after(self) -> float: ...
    def _sweep(self, held_since: float) -> bool: ...


def sweep_delay(lease: float) -> float:
    """How long delivered rows may wait for a commit before the sweeper deletes them."""
    return min(_MAX_DELAY, max(_MIN_DELAY, lease / 4))


class _Sweeper:
    """The process's one sweeper thread and the outboxes it watches."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        # id -> (weak reference, watch number): a watch ends only if it was not renewed meanwhile
        self._watched: dict[int, tuple[weakref.ref[Sweepable], int]] = {}
        self._numbers = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def watch(self, outbox: Sweepable) -> None:
        with self._wake:
            self._watched[id(outbox)] = (weakref.ref(outbox), next(self._numbers))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="domainbus-outbox-sweeper", daemon=True
                )
                self._thread.start()
                if not self._at_exit:
                    atexit.register(self.sweep_all)
                    self._at_exit = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._watched:
                    self._wake.wait()
                watched = list(self._watched.items())
            delays = [outbox.sweep_after for outbox in (ref() for _, (ref, _) in watched) if outbox]
            time.sleep(min(delays, default=_MIN_DELAY) / 2)
            self._sweep(watched, time.monotonic(), delay=None)

    def sweep_all(self) -> None:
        """Delete every held row now (at interpreter exit)."""
        with self._wake:
            watched = list(self._watched.items())
        self._sweep(watched, time.monotonic(), delay=0.0)

    def _sweep(
        self,
        watched: list[tuple[int, tuple[weakref.ref[Sweepable], int]]],
        now: float,
        delay: float | None,
    ) -> None:
        for key, (ref, number) in watched:
            outbox = ref()
            try:
                done = outbox is None or outbox._sweep(
                    now - (outbox.sweep_after if delay is None else delay)
                )
            except Exception:  # never let the thread die; the rows wait for the next sweep
                when = "at exit: relay() will deliver them again" if delay == 0.0 else "retrying"
                logger.warning("deleting delivered outbox rows failed %s", when, exc_info=True)
                done = False
            if done:
                with self._wake:
                    if self._watched.get(key, (None, 0))[1] == number:
                        del self._watched[key]

    def forget_after_fork(self) -> None:
        self._wake = threading.Condition()
        self._watched.clear()
        self._thread = None


_sweeper = _Sweeper()
watch = _sweeper.watch
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_sweeper.forget_after_fork)

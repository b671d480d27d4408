"""Interpreter exit and Ctrl-C (issue 10, items 1, 4 and 5), on both backends.

Each scenario runs in a child interpreter (the exit itself is what is tested): a daemon thread
still dispatching when the program ends, a Ctrl-C while leaving `with BatchQueue(...)`, a
Ctrl-C during the exit hook's drain, and several queues whose exit warnings raise. The Rust
backend used to abort there (SIGABRT, "FATAL: exception not rethrown"); now both backends exit
normally, drain what the rules say they drain and report the rest, queue by queue.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

import domainbus

PYTHON_DIR = Path(domainbus.__file__).resolve().parents[1]  # the tree under test


def run_child(backend: ModuleType, code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PYTHON_DIR), env.get("PYTHONPATH", "")])
    prelude = f"from domainbus import {backend.__name__.rsplit('.', 1)[1]} as backend\n"
    return subprocess.run(
        [sys.executable, *flags, "-c", prelude + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_no_abort(child: subprocess.CompletedProcess[str]) -> None:
    assert child.returncode != -signal.SIGABRT, child.stderr
    assert "FATAL" not in child.stderr, child.stderr
    assert "Fatal Python error" not in child.stderr, child.stderr


DAEMON_DISPATCHERS = """
import asyncio, threading, time

class Event:
    pass

def busy(event):
    total = 0
    for i in range(300):
        total += i

def sleepy(event):
    time.sleep(0.0005)

def events():
    while True:
        time.sleep(0.0002)
        yield Event()

d = backend.Dispatcher()
d.register_handler(Event, busy)
s = backend.Dispatcher()
s.register_handler(Event, sleepy)
batch = [Event()] * 500

def batches():
    while True:
        d.dispatch_batch(batch)

def singles():
    while True:
        s.dispatch(Event())

def generated():
    d.dispatch_batch(events())

async def async_handler(event):
    await asyncio.sleep(0.0005)

a = backend.Dispatcher()
a.register_handler(Event, async_handler)

def async_loop():
    async def forever():
        while True:
            await a.dispatch_async(Event())
            await a.dispatch_batch_async([Event(), Event()], concurrent=True)
    asyncio.run(forever())

full = backend.BatchQueue(d, capacity=1)  # never started: the producer blocks in put()

def producer():
    while True:
        full.put(Event())

def async_generated():
    asyncio.run(a.dispatch_batch_async(events()))  # the fast path, a Python iterator

big = backend.BatchQueue(d)

def generated_producer():
    big.put_many(events())

threads = (batches, batches, singles, generated, async_loop, producer, async_generated,
           generated_producer)
for target in threads:
    threading.Thread(target=target, daemon=True).start()
time.sleep(0.3)
print("main done")
"""


def test_daemon_threads_dispatching_at_exit(backend: ModuleType) -> None:
    for _ in range(3):  # the moment of exit varies; every run must end normally
        child = run_child(backend, DAEMON_DISPATCHERS)
        assert_no_abort(child)
        assert child.returncode == 0, child.stderr
        assert child.stdout == "main done\n"
        assert "still held 1 undispatched event(s)" in child.stderr  # the full queue


REPORT_AT_EXIT = """
import atexit, _thread, time
seen = []
# registered before the first queue: runs after the queues' exit hook (atexit is LIFO)
atexit.register(lambda: print(f"dispatched {len(seen)} of {TOTAL}", flush=True))

class Event:
    def __init__(self, n):
        self.n = n

def handler(event):
    seen.append(event.n)
    if event.n == INTERRUPT_AT:
        _thread.interrupt_main()  # Ctrl-C, delivered to the main thread
    time.sleep(0.001)

d = backend.Dispatcher()
d.register_handler(Event, handler)
"""


def test_ctrl_c_leaving_with_block_still_drains_at_exit(backend: ModuleType) -> None:
    code = (
        REPORT_AT_EXIT
        + """
TOTAL, INTERRUPT_AT = 400, 20
with backend.BatchQueue(d, batch_size=16) as q:
    q.put_many(Event(n) for n in range(TOTAL))
"""
    )
    child = run_child(backend, code)
    assert_no_abort(child)
    assert "KeyboardInterrupt" in child.stderr
    assert child.returncode == -signal.SIGINT  # the uncaught KeyboardInterrupt, as usual
    assert child.stdout == "dispatched 400 of 400\n"  # queue rule 6: drained at exit
    assert "undispatched" not in child.stderr


def test_ctrl_c_during_the_exit_drain_exits_normally(backend: ModuleType) -> None:
    code = (
        REPORT_AT_EXIT
        + """
TOTAL, INTERRUPT_AT = 2000, 20
q = backend.BatchQueue(d, batch_size=16)
q.put_many(Event(n) for n in range(TOTAL))
q.start()
"""
    )
    child = run_child(backend, code)
    assert_no_abort(child)
    assert child.returncode == 0, child.stderr
    assert "KeyboardInterrupt" in child.stderr  # printed by the exit hook
    assert "raised while stopping a BatchQueue at interpreter exit" in child.stderr
    # what the interrupted drain left is reported with its count
    assert "undispatched event(s) at interpreter exit" in child.stderr
    done = int(child.stdout.split()[1])
    assert 20 < done < 2000


def test_every_queue_reported_when_exit_warnings_raise(backend: ModuleType) -> None:
    code = """
class Event:
    pass
d = backend.Dispatcher()
queues = [backend.BatchQueue(d) for _ in range(3)]
for count, q in enumerate(queues, start=1):
    q.put_many([Event()] * count)
started = backend.BatchQueue(d)
started.put_many([Event()] * 5)
started.start()
"""
    child = run_child(backend, code, "-W", "error::RuntimeWarning")
    assert_no_abort(child)
    for count in (1, 2, 3):
        message = f"still held {count} undispatched event(s) at interpreter exit"
        assert child.stderr.count(message) == 1, child.stderr
    assert "still held 5" not in child.stderr  # the started queue was drained


class Event:
    def __init__(self, n: int) -> None:
        self.n = n


def test_second_stop_after_an_interrupted_one_waits_for_the_consumer(
    backend: ModuleType,
) -> None:
    seen: list[int] = []
    main = threading.get_ident()

    def handler(event: Event) -> None:
        seen.append(event.n)
        if event.n == 10:
            _thread.interrupt_main()
        time.sleep(0.001)

    d = backend.Dispatcher()
    d.register_handler(Event, handler)
    q = backend.BatchQueue(d, batch_size=8)
    q.put_many(Event(n) for n in range(300))
    q.start()
    with pytest.raises(KeyboardInterrupt):
        q.stop()  # interrupted while waiting for the consumer
    assert threading.get_ident() == main
    assert q.stop() is True  # waits for the consumer, whatever Thread.is_alive() says
    assert len(seen) == 300
    assert q.dispatched_count == q.put_count == 300
    assert len(q) == 0

"""BatchQueue: the rules of `domainbus.pure.queue`, pinned on both backends.

Every test takes the `backend` fixture. Waits in tests are bounded by generous timeouts (they
only fail a broken queue); nothing asserts on elapsed time.
"""

from __future__ import annotations

import _thread
import gc
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domainbus import QueueClosed

CONSUMER_NOTE = "domainbus: raised in the BatchQueue consumer thread"
BUSY = "this BatchQueue is already being consumed (by its started consumer or a drain() call)"
LONG = 30.0  # seconds: only a broken queue waits this long


class Boom(Exception):
    pass


class Recorder:
    """A handler that logs events and can hold the consumer on chosen events."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.entered = threading.Event()  # set when a held event reaches the handler
        self.release = threading.Event()
        self.hold: Callable[[Any], bool] = lambda event: False
        self.fail: Callable[[Any], bool] = lambda event: False

    def __call__(self, event: Any) -> None:
        self.seen.append(event)
        if self.hold(event):
            self.entered.set()
            assert self.release.wait(LONG), "the test never released the handler"
        if self.fail(event):
            raise Boom(f"failed on {event!r}")


def make(
    backend: ModuleType, recorder: Recorder | None = None, **options: Any
) -> tuple[Any, Recorder]:
    """A BatchQueue over a fresh dispatcher whose handler for `object` is `recorder`."""
    recorder = recorder or Recorder()
    dispatcher = backend.Dispatcher(on_error=options.pop("on_error", "raise"))
    dispatcher.register_handler(object, recorder)
    return backend.BatchQueue(dispatcher, **options), recorder


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Callbacks run after the test (release held handlers, stop queues)."""
    callbacks: list[Callable[[], object]] = []
    yield callbacks
    for callback in reversed(callbacks):
        callback()


def held_queue(
    backend: ModuleType, cleanup: list[Callable[[], object]], **options: Any
) -> tuple[Any, Recorder]:
    """A started queue whose consumer is stuck in the handler of event "hold" (already put)."""
    q, rec = make(backend, **options)
    rec.hold = lambda event: event == "hold"
    cleanup.append(lambda: q.stop(drain=False, timeout=LONG))
    cleanup.append(rec.release.set)
    q.start()
    q.put("hold")
    assert rec.entered.wait(LONG)
    return q, rec


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a started thread; the dict gets its "result" or "error"."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"capacity": 0}, ValueError, "capacity must be from 1 to 16777216, not 0"),
        ({"capacity": 1 << 25}, ValueError, "capacity must be from 1 to 16777216, not 33554432"),
        ({"capacity": "8"}, TypeError, "capacity must be an int, not str"),
        ({"capacity": True}, TypeError, "capacity must be an int, not bool"),
        ({"batch_size": -3}, ValueError, "batch_size must be from 1 to 16777216, not -3"),
        ({"batch_size": 2.0}, TypeError, "batch_size must be an int, not float"),
    ],
)
def test_bad_sizes_are_rejected(
    backend: ModuleType, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        backend.BatchQueue(backend.Dispatcher(), **options)
    assert str(caught.value) == message


def test_dispatcher_needs_dispatch_batch(backend: ModuleType) -> None:
    with pytest.raises(TypeError) as caught:
        backend.BatchQueue(object())
    assert str(caught.value) == (
        "BatchQueue needs a dispatcher with a dispatch_batch() method, not object"
    )


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda q: q.put(1, block=1), TypeError, "block must be a bool, not int"),
        (lambda q: q.put(1, timeout="1"), TypeError, "timeout must be a number or None, not str"),
        (lambda q: q.put(1, timeout=True), TypeError, "timeout must be a number or None, not bool"),
        (
            lambda q: q.put(1, timeout=-1),
            ValueError,
            "timeout must be a non-negative number, not -1",
        ),
        (
            lambda q: q.put(1, timeout=float("nan")),
            ValueError,
            "timeout must be a non-negative number, not nan",
        ),
        (lambda q: q.put_many(5), TypeError, "put_many() needs an iterable of events, not int"),
        (lambda q: q.put_many([1], block=None), TypeError, "block must be a bool, not NoneType"),
        (lambda q: q.join(timeout=[]), TypeError, "timeout must be a number or None, not list"),
        (lambda q: q.drain(-1), ValueError, "max_events must be >= 0, not -1"),
        (lambda q: q.drain("all"), TypeError, "max_events must be an int or None, not str"),
        (lambda q: q.stop(drain="yes"), TypeError, "drain must be a bool, not str"),
    ],
)
def test_bad_arguments_are_rejected(
    backend: ModuleType, call: Callable[[Any], object], error: type[Exception], message: str
) -> None:
    q, rec = make(backend)
    with pytest.raises(error) as caught:
        call(q)
    assert str(caught.value) == message
    assert (len(q), q.put_count, q.closed, rec.seen) == (0, 0, False, [])


# -- drain, counters, batches -----------------------------------------------------------------


def test_drain_dispatches_in_put_order(backend: ModuleType) -> None:
    q, rec = make(backend, capacity=100, batch_size=3)
    assert (q.capacity, len(q), q.closed) == (100, 0, False)
    for n in range(7):
        q.put(n)
    assert q.put_many(range(7, 10)) == 3
    assert (len(q), q.put_count, q.dispatched_count) == (10, 10, 0)
    assert q.drain(max_events=4) == 4
    assert (rec.seen, len(q), q.dispatched_count) == ([0, 1, 2, 3], 6, 4)
    assert q.drain() == 6
    assert (rec.seen, len(q), q.put_count, q.dispatched_count) == (list(range(10)), 0, 10, 10)
    assert q.drain() == 0


class BatchRecorder:
    """A dispatcher that is not a domainbus Dispatcher: logs the batches it is handed."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def dispatch_batch(self, events: Any) -> int:
        self.batches.append(list(events))
        return 2 * len(self.batches[-1])


def test_any_object_with_dispatch_batch_is_fed_batches(backend: ModuleType) -> None:
    dispatcher = BatchRecorder()
    q = backend.BatchQueue(dispatcher, batch_size=4)
    q.put_many(range(10))
    assert q.drain(max_events=9) == 18
    assert dispatcher.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    q.start()
    q.put(10)
    assert q.join(LONG)
    assert q.stop()
    assert [e for batch in dispatcher.batches for e in batch] == list(range(11))


def test_dispatch_batch_must_return_an_int(backend: ModuleType) -> None:
    class Sloppy:
        def dispatch_batch(self, events: Any) -> None:
            list(events)

    q = backend.BatchQueue(Sloppy())
    q.put(1)
    with pytest.raises(TypeError, match=r"^dispatch_batch\(\) must return an int, not NoneType$"):
        q.drain()
    assert (len(q), q.dispatched_count) == (0, 1)


def test_dispatchers_return_value_is_the_handler_calls(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(int, lambda e: None)
    dispatcher.register_handler(object, lambda e: None)
    q = backend.BatchQueue(dispatcher)
    q.put_many([1, "a", 2])
    assert q.drain() == 5


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 99)),
            st.tuples(
                st.sampled_from(["put_many-list", "put_many-tuple", "put_many-iter"]),
                st.lists(st.integers(0, 99), max_size=6),
            ),
            st.tuples(st.just("drain"), st.integers(0, 5)),
        ),
        max_size=30,
    ),
    st.integers(1, 5),
    st.integers(1, 4),
)
def test_non_blocking_puts_and_drains_follow_a_fifo_model(
    backend: ModuleType, program: list[tuple[str, Any]], capacity: int, batch_size: int
) -> None:
    """Model: a FIFO of at most `capacity` events (nothing is started, so nothing is taken)."""
    q, rec = make(backend, capacity=capacity, batch_size=batch_size)
    model: deque[int] = deque()
    dispatched: list[int] = []
    for op, arg in program:
        if op == "put":
            if len(model) < capacity:
                q.put(arg, block=False)
                model.append(arg)
            else:
                with pytest.raises(queue.Full):
                    q.put(arg, block=False)
        elif op.startswith("put_many"):
            room = capacity - len(model)
            events = {"list": list, "tuple": tuple, "iter": iter}[op.split("-")[1]](arg)
            if len(arg) <= room:
                assert q.put_many(events, block=False) == len(arg)
                model.extend(arg)
            else:
                with pytest.raises(queue.Full) as caught:
                    q.put_many(events, block=False)
                assert caught.value.accepted == room  # type: ignore[attr-defined]
                model.extend(arg[:room])
        else:
            taken = [model.popleft() for _ in range(min(arg, len(model)))]
            assert q.drain(arg) == len(taken)
            dispatched += taken
        assert (len(q), q.dispatched_count, rec.seen) == (len(model), len(dispatched), dispatched)
        assert q.put_count == len(model) + len(dispatched)


# -- the started consumer ---------------------------------------------------------------------


def producer_events(producer: int, count: int) -> list[tuple[int, int]]:
    return [(producer, seq) for seq in range(count)]


def run_stress(backend: ModuleType, producers: int, per_producer: int) -> None:
    counts = [0] * producers
    last = [-1] * producers
    disorder: list[tuple[int, int]] = []

    def handler(event: tuple[int, int]) -> None:
        producer, seq = event
        if seq != last[producer] + 1:
            disorder.append(event)
        last[producer] = seq
        counts[producer] += 1

    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(tuple, handler)
    q = backend.BatchQueue(dispatcher, capacity=4096, batch_size=512)

    def produce(producer: int) -> None:
        events = producer_events(producer, per_producer)
        if producer % 2:
            for start in range(0, per_producer, 250):
                q.put_many(events[start : start + 250])
        else:
            for event in events:
                q.put(event)

    with q:
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert q.join(LONG)
    assert disorder == []
    assert counts == [per_producer] * producers
    total = producers * per_producer
    assert (q.put_count, q.dispatched_count, len(q), q.closed) == (total, total, 0, True)


def test_stress_every_event_once_in_producer_order(backend: ModuleType) -> None:
    run_stress(backend, producers=8, per_producer=125_000)  # 1M events, about 1 s per backend


@pytest.mark.slow
def test_stress_issue_size(backend: ModuleType) -> None:
    run_stress(backend, producers=8, per_producer=250_000)


def test_join_waits_for_events_put_before_it(backend: ModuleType) -> None:
    q, rec = make(backend)
    assert q.join(0) is True  # nothing put yet
    q.put_many(range(5))
    assert q.join(0) is False  # nobody consumes
    with q:
        q.put_many(range(5, 300))
        assert q.join(LONG) is True
        assert rec.seen == list(range(300))
    assert q.closed


def test_join_waits_until_the_handlers_are_done(
    backend: ModuleType, cleanup: list[Callable[[], object]]
) -> None:
    q, rec = held_queue(backend, cleanup)
    assert (q.dispatched_count, len(q)) == (1, 0)  # handed to the dispatcher...
    assert q.join(0.05) is False  # ...but its handler is still running
    rec.release.set()
    assert q.join(LONG) is True


def test_context_manager_drains_on_exit(backend: ModuleType) -> None:
    q, rec = make(backend, batch_size=7)
    with q as entered:
        assert entered is q
        q.put_many(range(100))
    assert (rec.seen, len(q), q.closed) == (list(range(100)), 0, True)
    with pytest.raises(QueueClosed, match=r"^the BatchQueue is stopped$"):
        q.put(1)
    with pytest.raises(RuntimeError, match=r"^a stopped BatchQueue cannot be started again$"):
        q.start()


def test_start_twice_and_drain_while_started_are_refused(
    backend: ModuleType, cleanup: list[Callable[[], object]]
) -> None:
    q, _ = make(backend)
    q.start()
    cleanup.append(q.stop)
    with pytest.raises(RuntimeError, match=r"^this BatchQueue is already started$"):
        q.start()
    with pytest.raises(RuntimeError) as caught:
        q.drain()
    assert str(caught.value) == BUSY


def test_backpressure_blocks_producers_and_loses_nothing(
    backend: ModuleType, cleanup: list[Callable[[], object]]
) -> None:
    q, rec = held_queue(backend, cleanup, capacity=10)
    assert q.put_many(range(10), block=False) == 10  # the held event left the queue
    assert len(q) == 10
    with pytest.raises(queue.Full) as caught:
        q.put(10, block=False)
    assert str(caught.value) == "the BatchQueue is full (capacity 10)"
    with pytest.raises(queue.Full):
        q.put(10, timeout=0.05)
    with pytest.raises(queue.Full) as many:
        q.put_many([10, 11], timeout=0.01)
    assert many.value.accepted == 0  # type: ignore[attr-defined]
    assert str(many.value) == (
        "the BatchQueue is full (capacity 10); put_many() put 0 event(s) before"
    )
    assert (len(q), q.put_count) == (10, 11)

    blocked = [in_thread(lambda p=p: q.put_many(range(100 * p, 100 * p + 50))) for p in (1, 2)]
    blocked.append(in_thread(lambda: q.put("last")))
    rec.release.set()
    for thread, outcome in blocked:
        thread.join(LONG)
        assert "error" not in outcome
    assert q.join(LONG)
    got = rec.seen[1:]
    assert sorted(map(str, got)) == sorted(
        map(str, [*range(10), *range(100, 150), *range(200, 250), "last"])
    )
    for p in (1, 2):
        mine = [e for e in got if isinstance(e, int) and 100 * p <= e < 100 * p + 50]
        assert mine == list(range(100 * p, 100 * p + 50))


def test_put_many_reports_what_went_in(backend: ModuleType) -> None:
    q, _ = make(backend, capacity=5)

    def events() -> Iterator[int]:
        yield from range(3)
        raise Boom("source broke")

    with pytest.raises(Boom) as caught:
        q.put_many(events())
    assert caught.value.__notes__ == ["domainbus: put_many() put 3 event(s) before this was raised"]
    with pytest.raises(queue.Full) as full:
        q.put_many(iter([3, 4, 5, 6]), block=False)
    assert full.value.accepted == 2  # type: ignore[attr-defined]
    assert (len(q), q.drain(), q.put_many([])) == (5, 5, 0)


def test_put_many_source_may_use_the_queue(backend: ModuleType) -> None:
    q, rec = make(backend)

    def events() -> Iterator[object]:
        yield 0
        q.put(f"side {len(q)}")
        yield 1

    assert q.put_many(events()) == 2
    assert q.put_many((2, 3)) == 2
    q.drain()
    assert rec.seen == [0, "side 1", 1, 2, 3]


def test_blocked_producer_gets_queue_closed_on_stop(
    backend: ModuleType, cleanup: list[Callable[[], object]]
) -> None:
    q, rec = held_queue(backend, cleanup, capacity=1)
    q.put("queued")
    blocked, outcome = in_thread(lambda: q.put_many(["refused"]))
    assert q.stop(drain=True, timeout=0.01) is False  # the consumer is still held
    blocked.join(LONG)
    assert isinstance(outcome["error"], QueueClosed)
    assert outcome["error"].accepted == 0
    rec.release.set()
    assert q.stop() is True
    assert rec.seen == ["hold", "queued"]


def test_stop_without_drain_ends_after_the_event_in_hand(
    backend: ModuleType, cleanup: list[Callable[[], object]]
) -> None:
    q, rec = make(backend)
    rec.hold = lambda event: event == "hold"
    cleanup.append(rec.release.set)
    q.put_many(["hold", 0, 1, 2, 3])  # one batch: the rest is already in the consumer's hands
    q.start()
    assert rec.entered.wait(LONG)
    stopper, outcome = in_thread(lambda: q.stop(drain=False))
    while not q.closed:
        time.sleep(0.001)
    rec.release.set()
    stopper.join(LONG)
    assert outcome == {"result": True}
    assert (rec.seen, len(q), q.dispatched_count, q.closed) == (["hold"], 4, 1, True)
    assert q.drain() == 4
    assert rec.seen == ["hold", 0, 1, 2, 3]


def test_stop_on_a_queue_never_started_drains_in_the_caller(backend: ModuleType) -> None:
    q, rec = make(backend)
    q.put_many(range(3))
    assert q.stop() is True
    assert (rec.seen, len(q), q.closed) == ([0, 1, 2], 0, True)
    q2, rec2 = make(backend)
    q2.put(1)
    assert q2.stop(drain=False) is True
    assert (rec2.seen, len(q2)) == ([], 1)


def test_handlers_can_put_and_stop_but_not_wait_for_themselves(backend: ModuleType) -> None:
    seen: list[Any] = []
    outcomes: list[Any] = []
    current: dict[str, Any] = {}

    def handler(event: Any) -> None:
        seen.append(event)
        q = current["queue"]
        if event == "fill":
            q.put_many(["a", "b"])
            try:
                q.put("c")
            except queue.Full as exc:
                outcomes.append(str(exc))
        elif event == "stop":
            outcomes.append(q.stop())
        elif event == "join":
            q.join()

    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(object, handler)
    q = current["queue"] = backend.BatchQueue(dispatcher, capacity=2)
    q.put_many(["fill", "stop"])
    q.start()
    assert q.join(LONG)
    assert outcomes == [
        "the BatchQueue is full (capacity 2) and put() was called by the thread consuming it, "
        "which cannot wait for itself",
        False,  # stop() from the consumer's thread cannot wait for itself either
    ]
    assert q.stop() is True  # the consumer drained what the handler put
    assert seen == ["fill", "stop", "a", "b"]

    q = current["queue"] = backend.BatchQueue(dispatcher)
    q.put("join")
    q.start()
    with pytest.raises(RuntimeError, match=r"would wait for itself"):
        q.join(LONG)
    assert q.stop() is True


# -- errors (rule 3) --------------------------------------------------------------------------


def test_consumer_error_is_raised_once_by_join_and_the_rest_stays_queued(
    backend: ModuleType,
) -> None:
    q, rec = make(backend)
    rec.fail = lambda event: event == 5
    q.put_many(range(10))
    q.start()
    with pytest.raises(Boom) as caught:
        q.join(LONG)
    assert str(caught.value) == "failed on 5"
    assert caught.value.__notes__[-1] == CONSUMER_NOTE
    assert (rec.seen, q.dispatched_count, len(q)) == (list(range(6)), 6, 4)
    assert q.join(0) is False  # raised once; the consumer has stopped
    q.start()  # resumes with the events after the failing one, in order
    q.put(10)
    assert q.join(LONG)
    assert rec.seen == list(range(11))
    assert q.stop()


def test_consumer_error_is_raised_by_put_which_does_not_queue(backend: ModuleType) -> None:
    q, rec = make(backend)
    rec.fail = lambda event: event == 0
    q.put(0)
    q.start()
    for _ in range(10_000):  # probe until the consumer has failed
        before = q.put_count
        try:
            q.put("probe")
        except Boom:
            break
        time.sleep(0.002)
    else:
        pytest.fail("put() never raised the consumer's error")
    assert q.put_count == before  # the put that raised queued nothing
    assert (rec.seen, len(q)) == ([0], q.put_count - 1)
    assert q.stop() is True  # raised once already; the probes stay queued
    assert len(q) == q.put_count - 1


def test_consumer_error_is_raised_by_stop_after_closing(backend: ModuleType) -> None:
    q, rec = make(backend)
    rec.fail = lambda event: event == 1
    q.put_many(range(4))
    q.start()
    with pytest.raises(Boom):
        q.stop()
    assert (q.closed, len(q), rec.seen) == (True, 2, [0, 1])
    assert q.drain() == 2  # still dispatchable
    assert rec.seen == [0, 1, 2, 3]


def test_collect_policy_dispatches_the_whole_batch_first(backend: ModuleType) -> None:
    q, rec = make(backend, on_error="collect")
    rec.fail = lambda event: event in (1, 3)
    q.put_many(range(5))
    q.start()
    with pytest.raises(ExceptionGroup) as caught:
        q.join(LONG)
    assert [str(e) for e in caught.value.exceptions] == ["failed on 1", "failed on 3"]
    assert (rec.seen, len(q)) == (list(range(5)), 0)
    q.stop()


def test_drain_propagates_handler_errors_directly(backend: ModuleType) -> None:
    q, rec = make(backend, batch_size=2)
    rec.fail = lambda event: event == 2
    q.put_many(range(5))
    with pytest.raises(Boom) as caught:
        q.drain()
    assert CONSUMER_NOTE not in getattr(caught.value, "__notes__", [])
    assert (rec.seen, len(q)) == ([0, 1, 2], 2)
    assert q.drain() == 2
    assert rec.seen == [0, 1, 2, 3, 4]


# -- Ctrl-C (rule 4) --------------------------------------------------------------------------


def interrupt_soon(how: str) -> threading.Timer:
    if how == "interrupt_main":
        timer = threading.Timer(0.1, _thread.interrupt_main)
    else:
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
@pytest.mark.parametrize("how", ["interrupt_main", "signal"])
@pytest.mark.parametrize("wait", ["put", "put_many", "join", "stop"])
def test_ctrl_c_interrupts_waits(
    backend: ModuleType, cleanup: list[Callable[[], object]], how: str, wait: str
) -> None:
    q, _ = held_queue(backend, cleanup, capacity=1)
    q.put("fills the queue")
    calls = {
        "put": lambda: q.put("blocked"),
        "put_many": lambda: q.put_many(["blocked"]),
        "join": lambda: q.join(),
        "stop": lambda: q.stop(),
    }
    timer = interrupt_soon(how)
    with pytest.raises(KeyboardInterrupt):
        calls[wait]()
    timer.join()


# -- fork and shutdown (rules 5 and 6) ----------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_an_empty_stopped_usable_queue(
    backend: ModuleType, cleanup: list[Callable[[], object]]
) -> None:
    q, rec = held_queue(backend, cleanup, capacity=4)
    q.put_many(range(4))
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            assert (len(q), q.put_count, q.dispatched_count, q.closed) == (0, 0, 0, False)
            rec.seen.clear()
            rec.hold = lambda event: False
            q.put_many(["a", "b"])
            assert q.drain() == 2
            q.start()
            q.put("c")
            assert q.join(LONG)
            assert q.stop() is True
            assert rec.seen == ["a", "b", "c"]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rec.release.set()
    assert q.stop() is True
    assert rec.seen == ["hold", 0, 1, 2, 3]


def run_script(backend: ModuleType, body: str) -> subprocess.CompletedProcess[str]:
    setup = f"""
        import threading
        from domainbus.{backend.__name__.rsplit(".", 1)[1]} import BatchQueue, Dispatcher
        count = 0
        def handler(event):
            global count
            count += 1
            if event == "fail":
                raise ValueError("handler failed")
            if count == TOTAL:
                print("dispatched", count, flush=True)
        dispatcher = Dispatcher()
        dispatcher.register_handler(object, handler)
    """
    script = textwrap.dedent(setup) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_exit_with_a_started_queue_dispatches_what_is_queued(backend: ModuleType) -> None:
    done = run_script(
        backend,
        """
        TOTAL = 20_000
        q = BatchQueue(dispatcher, capacity=TOTAL)
        q.put_many(range(TOTAL - 1))
        q.start()
        q.put("last")
        """,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "dispatched 20000\n", "")


def test_exit_reports_a_pending_error_and_the_events_left(backend: ModuleType) -> None:
    done = run_script(
        backend,
        """
        TOTAL = -1
        q = BatchQueue(dispatcher)
        q.put_many(["fail", 1, 2])
        q.start()
        never = BatchQueue(dispatcher)
        never.put_many([1, 2, 3])
        """,
    )
    assert done.returncode == 0
    assert "ValueError: handler failed" in done.stderr
    assert "domainbus: raised in the BatchQueue consumer thread" in done.stderr
    assert "domainbus: raised while stopping a BatchQueue at interpreter exit" in done.stderr
    warning = "RuntimeWarning: domainbus: a BatchQueue still held {} undispatched event(s)"
    assert warning.format(2) in done.stderr
    assert warning.format(3) in done.stderr


def test_queues_are_garbage_collected(backend: ModuleType) -> None:
    q, _ = make(backend)
    q.start()
    q.put(1)
    q.stop()
    refs = [weakref.ref(q), weakref.ref(make(backend)[0])]
    del q
    gc.collect()
    assert [ref() for ref in refs] == [None, None]

"""RedisWorker in threads of the test process against a real redis-server: dispatch on both
backends, key order, retries, dead letters (handler failures, undecodable records, malformed
entries), requeueing, leases shared by two workers, a clean stop. The crash tests with worker
processes are in test_redis_processes.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis

from domainbus.redis import DeadLetters, RedisPublisher, RedisWorker, partition_of
from domainbus.redis.dead_letters import frame_of_records
from domainbus.redis.entries import FORMAT_VERSION
from redis_support import CODEC, Placed, Poison, placed


@pytest.fixture
def r(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `condition()`; a guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Running:
    """A worker running in a thread; `stop()` waits for `run()` to return."""

    def __init__(self, worker: RedisWorker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(handle_signals=False)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def worker(r: redis.Redis, dispatcher: Any, **options: Any) -> RedisWorker:
    options.setdefault("stream", "s")
    options.setdefault("group", "g")
    options.setdefault("lease_ms", 1000)
    options.setdefault("heartbeat_s", 0.05)
    options.setdefault("block_ms", 50)
    options.setdefault("freeze_gc", False)
    return RedisWorker(r, dispatcher, codec=CODEC, **options)


def first_seen(log: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Per key, the seqs in the order first handled (deliveries again are at least once)."""
    seen: set[tuple[str, int]] = set()
    by_key: dict[str, list[int]] = {}
    for item in log:
        if item not in seen:
            seen.add(item)
            by_key.setdefault(item[0], []).append(item[1])
    return by_key


def pending(r: redis.Redis, stream: str, group: str, partitions: int) -> int:
    return sum(int(r.xpending(f"{stream}:{p}", group)["pending"]) for p in range(partitions))


def test_every_event_is_dispatched_in_key_order(r: redis.Redis, make_dispatcher: Any) -> None:
    log: list[tuple[str, int]] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Placed, lambda e: log.append((e.aggregate_id, e.seq)))
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=4, frame_size=100)
    publisher.publish_batch(placed(5_000, keys=50))
    running = Running(worker(r, dispatcher))
    wait_for(lambda: len(log) >= 5_000, "5,000 events")
    publisher.publish_batch(placed(1_000, keys=50, start=5_000))
    wait_for(lambda: len(log) >= 6_000, "1,000 more")
    running.stop()
    assert len(log) == 6_000
    assert first_seen(log) == {f"k{k}": list(range(120)) for k in range(50)}
    assert pending(r, "s", "g", 4) == 0
    assert running.worker.lag() == 0
    assert r.keys("s:g:lease:*") == []
    assert r.zcard("s:g:workers") == 0


def test_a_failing_handler_is_retried_then_dead_lettered_and_the_rest_goes_on(
    r: redis.Redis, make_dispatcher: Any
) -> None:
    log: list[tuple[str, int]] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Placed, lambda e: log.append((e.aggregate_id, e.seq)))

    def refuse(event: Poison) -> None:
        raise RuntimeError(f"cannot handle {event.seq}")

    dispatcher.register_handler(Poison, refuse)
    events: list[Any] = list(placed(300, keys=3))
    events.insert(100, Poison(aggregate_id="k1", seq=-1))
    events.insert(200, Poison(aggregate_id="k2", seq=-2))
    RedisPublisher(r, CODEC, stream="s", partitions=2).publish_batch(events)
    running = Running(worker(r, dispatcher, max_deliveries=3, retry_delay=0.01))
    wait_for(lambda: r.xlen("s:dead") == 2 and len(set(log)) == 300, "the dead letters")
    wait_for(lambda: pending(r, "s", "g", 2) == 0, "every entry acknowledged")
    running.stop()
    assert first_seen(log) == {f"k{k}": list(range(100)) for k in range(3)}
    letters = DeadLetters(r, "s").list()
    assert sorted(letter.error for letter in letters) == [
        "RuntimeError: cannot handle -1",
        "RuntimeError: cannot handle -2",
    ]
    for letter in letters:
        assert letter.reason == "handler-failed"
        assert letter.deliveries == 3
        assert letter.group == "g" and letter.source.startswith("s:")
        assert [type(e) for e in CODEC.decode_batch(letter.frame)] == [Poison]


def test_dead_letters_can_be_requeued_once_fixed(r: redis.Redis, make_dispatcher: Any) -> None:
    fixed = threading.Event()
    handled: list[int] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Placed, lambda e: None)

    def flaky(event: Poison) -> None:
        if not fixed.is_set():
            raise ValueError("not yet")
        handled.append(event.seq)

    dispatcher.register_handler(Poison, flaky)
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=2)
    publisher.publish_batch([Poison(aggregate_id="a", seq=1), Poison(aggregate_id="b", seq=2)])
    running = Running(worker(r, dispatcher, max_deliveries=2, retry_delay=0.01))
    wait_for(lambda: r.xlen("s:dead") == 2, "two dead letters")
    fixed.set()
    dead = DeadLetters(r, "s")
    first = dead.list()[0].id
    with pytest.raises(KeyError, match="no dead letter with id 1-1"):
        dead.requeue(["1-1"])
    assert dead.requeue([first]) == 1
    assert dead.requeue() == 1
    wait_for(lambda: sorted(handled) == [1, 2], "the requeued events")
    running.stop()
    assert len(dead) == 0


def test_undecodable_records_and_malformed_entries_are_dead_lettered(
    r: redis.Redis, make_dispatcher: Any
) -> None:
    log: list[int] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Placed, lambda e: log.append(e.seq))
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=1)
    publisher.publish_batch([Placed(aggregate_id="a", seq=0)])
    good = [msgspec.Raw(CODEC.encode(Placed(aggregate_id="a", seq=n))) for n in (1, 3)]
    frame = frame_of_records([good[0], msgspec.msgpack.encode({"type": "Nope"}), good[1]])
    r.xadd("s:0", {"format": FORMAT_VERSION, "count": 3, "events": frame})
    r.xadd("s:0", {"format": FORMAT_VERSION, "count": 1, "events": b"\xc1garbage"})
    r.xadd("s:0", {"something": "else"})
    publisher.publish_batch([Placed(aggregate_id="a", seq=4)])
    running = Running(worker(r, dispatcher))
    wait_for(lambda: log[-1:] == [4], "the last event")
    running.stop()
    assert log == [0, 1, 3, 4]
    letters = DeadLetters(r, "s").list()
    assert [(d.reason, d.index) for d in letters] == [
        ("undecodable", 1),
        ("undecodable", -1),
        ("malformed-entry", -1),
    ]
    assert "unknown-tag" in letters[0].error
    assert "not a domainbus frame" in letters[2].error
    assert pending(r, "s", "g", 1) == 0


def test_two_workers_share_the_partitions_and_hand_over_on_stop(
    r: redis.Redis, backend: Any
) -> None:
    logs: list[list[tuple[str, int]]] = [[], []]

    def dispatcher(log: list[tuple[str, int]]) -> Any:
        d = backend.Dispatcher()
        d.register_handler(Placed, lambda e: log.append((e.aggregate_id, e.seq)))
        return d

    publisher = RedisPublisher(r, CODEC, stream="s", partitions=8)
    first = Running(worker(r, dispatcher(logs[0]), consumer="one", partitions=8))
    leases = lambda w: w._leases.held() if w._leases else set()  # noqa: E731
    wait_for(lambda: len(leases(first.worker)) == 8, "all leases to the first worker")
    second = Running(worker(r, dispatcher(logs[1]), consumer="two", partitions=8))
    wait_for(
        lambda: len(leases(first.worker)) == 4 and len(leases(second.worker)) == 4,
        "four partitions each",
    )
    assert leases(first.worker).isdisjoint(leases(second.worker))
    publisher.publish_batch(placed(4_000, keys=40))
    wait_for(lambda: len(logs[0]) + len(logs[1]) >= 4_000, "every event")
    assert logs[0] and logs[1]
    assert {k for k, _ in logs[0]}.isdisjoint({k for k, _ in logs[1]})
    first.stop()
    wait_for(lambda: len(leases(second.worker)) == 8, "the hand-over")
    publisher.publish_batch(placed(4_000, keys=40, start=4_000))
    wait_for(lambda: len(logs[0]) + len(logs[1]) >= 8_000, "every event")
    second.stop()
    combined = first_seen(logs[0] + logs[1])
    assert combined == {f"k{k}": list(range(200)) for k in range(40)}


def test_partitions_must_agree_and_bad_options_are_named(r: redis.Redis) -> None:
    RedisPublisher(r, CODEC, stream="s", partitions=4).publish_batch(placed(1, 1))
    bad = worker(r, object.__new__(type("D", (), {"dispatch_batch": lambda s, e: 0})), partitions=5)
    with pytest.raises(ValueError, match="set up with 4 partitions, not 5"):
        bad.run(handle_signals=False)
    with pytest.raises(TypeError, match="dispatch_batch"):
        RedisWorker(r, object(), codec=CODEC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_deliveries must be an int >= 1"):
        RedisWorker(r, bad.dispatcher, codec=CODEC, max_deliveries=0)
    with pytest.raises(ValueError, match="heartbeat_s must be > 0 and at most a third"):
        RedisWorker(r, bad.dispatcher, codec=CODEC, lease_ms=1000, heartbeat_s=0.5)


def test_the_readme_example_runs(r: redis.Redis, redis_server: Any) -> None:
    """The `py` block of the README's Redis section (not run by test_readme: it needs Redis)."""
    import re
    from pathlib import Path

    from domainbus import demo

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Scale out: Redis Streams workers") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```py\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1
    namespace = {"REDIS_URL": redis_server.url, "UserRegistered": demo.UserRegistered}
    exec(compile(blocks[0], "README.md", "exec"), namespace)


def test_an_entry_read_but_never_seen_is_recovered_in_order(
    r: redis.Redis, make_dispatcher: Any
) -> None:
    """A read whose reply was lost (a client retrying it) leaves an entry pending for this
    worker: its periodic self-check recovers it before newer entries."""
    log: list[int] = []
    busy, go = threading.Event(), threading.Event()
    dispatcher = make_dispatcher()

    def handle(event: Placed) -> None:
        if event.seq == 0:
            busy.set()
            go.wait(30)
        log.append(event.seq)

    dispatcher.register_handler(Placed, handle)
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=1)
    publisher.publish_batch([Placed(aggregate_id="a", seq=0)])
    running = Running(worker(r, dispatcher, consumer="me", lease_ms=300, read_count=1))
    busy.wait(30)
    publisher.publish_batch([Placed(aggregate_id="a", seq=1)])
    publisher.publish_batch([Placed(aggregate_id="a", seq=2)])
    assert r.xreadgroup("g", "me", {"s:0": ">"}, count=1)  # seq 1, as if the reply was lost
    time.sleep(0.4)  # longer than lease_ms: the self-check is due when the batch ends
    go.set()
    wait_for(lambda: len(log) >= 3, "three events")
    running.stop()
    assert log == [0, 1, 2]


def consumers(
    r: redis.Redis, stream: str, group: str, partitions: int
) -> dict[int, dict[str, int]]:
    """Per partition: the group's consumers and their pending entries (XINFO CONSUMERS)."""
    return {
        p: {
            c["name"].decode(): int(c["pending"]) for c in r.xinfo_consumers(f"{stream}:{p}", group)
        }
        for p in range(partitions)
    }


def test_a_clean_stop_deletes_the_consumer_where_it_has_nothing_pending(
    r: redis.Redis, make_dispatcher: Any
) -> None:
    log: list[tuple[str, int]] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Placed, lambda e: log.append((e.aggregate_id, e.seq)))
    dispatcher.register_handler(Poison, lambda e: 1 / 0)
    events: list[Any] = list(placed(400, keys=8))
    RedisPublisher(r, CODEC, stream="s", partitions=4).publish_batch(events)
    running = Running(worker(r, dispatcher, consumer="w1", max_deliveries=100, retry_delay=30))
    wait_for(lambda: len(log) == 400, "400 events")
    wait_for(lambda: pending(r, "s", "g", 4) == 0, "every entry acknowledged")
    assert all("w1" in found for found in consumers(r, "s", "g", 4).values())
    poison = Poison(aggregate_id="k3", seq=0)
    RedisPublisher(r, CODEC, stream="s", partitions=4).publish_batch([poison])
    wait_for(lambda: pending(r, "s", "g", 4) == 1, "the poison entry delivered")
    running.stop()
    stuck = partition_of("k3", 4)
    assert consumers(r, "s", "g", 4) == {
        p: ({"w1": 1} if p == stuck else {}) for p in range(4)
    }  # kept only where an entry is still pending (deleting it would drop that entry)
    assert pending(r, "s", "g", 4) == 1

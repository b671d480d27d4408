"""RedisIdempotencyStore with `idempotent`: a handler runs once per event id, marks after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from domainbus.outbox import idempotent
from domainbus.redis import RedisIdempotencyStore, RedisPublisher
from redis_support import CODEC, Placed, placed
from test_redis_worker import Running, wait_for, worker


@pytest.fixture
def r(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


def test_run_once_marks_after_the_call_with_a_ttl(r: redis.Redis) -> None:
    store = RedisIdempotencyStore(r, prefix="p", ttl=60)
    event_id = uuid.uuid4()
    calls: list[int] = []
    assert store.run_once("h", event_id, lambda: calls.append(1)) is True
    assert store.run_once("h", event_id, lambda: calls.append(2)) is False
    assert store.run_once("other", event_id, lambda: calls.append(3)) is True
    assert calls == [1, 3]
    assert 0 < r.ttl(f"p:h:{event_id}") <= 60


def test_a_raising_call_leaves_no_mark(r: redis.Redis) -> None:
    store = RedisIdempotencyStore(r)

    def fail() -> None:
        raise OSError("smtp down")

    event_id = uuid.uuid4()
    with pytest.raises(OSError):
        store.run_once("h", event_id, fail)
    assert not store.seen("h", event_id)
    with pytest.raises(TypeError, match=r"uuid\.UUID"):
        store.run_once("h", "not-a-uuid", fail)  # type: ignore[arg-type]


def test_idempotent_handlers_in_a_worker_skip_redeliveries(
    r: redis.Redis, make_dispatcher: Any
) -> None:
    store = RedisIdempotencyStore(r, prefix="once")
    seen: list[uuid.UUID] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(
        Placed, idempotent(lambda e: seen.append(e.event_id), store, key="count")
    )
    events = list(placed(500, keys=5))
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=2)
    publisher.publish_batch(events)
    publisher.publish_batch(events)  # the same events again, as a relay retry would
    running = Running(worker(r, dispatcher))
    wait_for(lambda: running.worker.events >= 1_000, "both copies")
    running.stop()
    assert sorted(seen) == sorted(e.event_id for e in events)

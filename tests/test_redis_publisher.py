"""RedisPublisher against a real redis-server: frames, partitions, key order, and a failed
XADD never counting as published (also through the outbox relay)."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from domainbus.outbox import SqliteOutbox
from domainbus.redis import PublishError, RedisPublisher, partition_of
from domainbus.redis.entries import FORMAT_VERSION, key_bytes
from redis_support import CODEC, Placed, decoded, entries, placed


@pytest.fixture
def r(redis_server: object) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)  # type: ignore[attr-defined]
    client.flushall()
    yield client
    client.close()


def test_events_are_framed_and_partitioned_by_key_in_order(r: redis.Redis) -> None:
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=4, frame_size=100)
    events = list(placed(2_000, keys=10))
    assert publisher.publish_batch(iter(events)) == 2_000
    found = entries(r, "s", 4)
    for stream_entries in found.values():
        for _, fields in stream_entries:
            assert fields[b"format"] == FORMAT_VERSION
            assert 1 <= int(fields[b"count"]) <= 100
            assert int(fields[b"count"]) == len(CODEC.decode_batch(fields[b"events"]))
    by_partition = decoded(r, "s", 4)
    assert sum(map(len, by_partition.values())) == 2_000
    for p, got in by_partition.items():
        for event in got:
            assert partition_of(event.aggregate_id, 4) == p
        for key in {e.aggregate_id for e in got}:
            assert [e.seq for e in got if e.aggregate_id == key] == list(range(200))
    assert r.hget("s:meta", "partitions") == b"4"


def test_one_key_fills_frames_of_frame_size(r: redis.Redis) -> None:
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=16)
    publisher.publish_batch(placed(2_500, keys=1))
    counts = [int(f[b"count"]) for found in entries(r, "s", 16).values() for _, f in found]
    assert counts == [1000, 1000, 500]


def test_partition_is_a_stable_crc32_of_the_key() -> None:
    assert partition_of("order-7", 16) == zlib.crc32(b"order-7") % 16
    event = Placed(aggregate_id="x", seq=0)
    assert key_bytes(event.event_id) == event.event_id.bytes
    assert partition_of(12, 5) == zlib.crc32(b"12") % 5
    with pytest.raises(TypeError, match="partition key must be"):
        partition_of(1.5, 4)


def test_default_key_is_the_event_id_without_aggregate_id(r: redis.Redis) -> None:
    from domainbus import demo

    publisher = RedisPublisher(r, demo.codec, stream="d", partitions=8)
    events = list(demo.generate_events(500, 3, 0))
    publisher.publish_batch(events)
    for p in range(8):
        for _, fields in r.xrange(f"d:{p}"):
            for event in demo.codec.decode_batch(fields[b"events"]):
                assert partition_of(event.event_id, 8) == p


def test_a_custom_key_function(r: redis.Redis) -> None:
    publisher = RedisPublisher(r, CODEC, stream="c", partitions=3, key=lambda e: e.seq)
    publisher.publish_batch(placed(30, keys=30))
    for p, got in decoded(r, "c", 3).items():
        assert all(partition_of(e.seq, 3) == p for e in got)


def test_partition_count_must_agree_with_the_stream(r: redis.Redis) -> None:
    RedisPublisher(r, CODEC, stream="m", partitions=4).publish_batch(placed(1, 1))
    other = RedisPublisher(r, CODEC, stream="m", partitions=8)
    with pytest.raises(ValueError, match="set up with 4 partitions, not 8"):
        other.publish_batch(placed(1, 1))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="partitions must be an int >= 1"):
        RedisPublisher("redis://127.0.0.1:1/0", CODEC, partitions=0)
    with pytest.raises(ValueError, match="stream must be"):
        RedisPublisher("redis://127.0.0.1:1/0", CODEC, stream="a b")
    with pytest.raises(TypeError, match="codec must be an EventCodec"):
        RedisPublisher("redis://127.0.0.1:1/0", object())  # type: ignore[arg-type]
    decoding = redis.Redis(port=1, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisPublisher(decoding, CODEC)


def test_an_event_the_codec_cannot_encode_writes_nothing(r: redis.Redis) -> None:
    from domainbus import demo

    publisher = RedisPublisher(r, CODEC, stream="t", partitions=2)
    with pytest.raises(TypeError, match="cannot encode"):
        publisher.publish_batch(
            [Placed(aggregate_id="a", seq=0), demo.UserDeactivated(user_id="u")]
        )
    assert sum(map(len, entries(r, "t", 2).values())) == 0


def test_an_error_reply_gives_the_written_prefix(r: redis.Redis) -> None:
    publisher = RedisPublisher(r, CODEC, stream="w", partitions=4)
    events = list(placed(400, keys=8))
    bad = partition_of(events[5].aggregate_id, 4)
    r.set(f"w:{bad}", "not a stream")
    with pytest.raises(PublishError, match="WRONGTYPE") as info:
        publisher.publish_batch(events)
    first_bad = next(i for i, e in enumerate(events) if partition_of(e.aggregate_id, 4) == bad)
    assert info.value.batch_index == first_bad
    written = {e.event_id for p, got in decoded_ok(r, "w", 4, bad).items() for e in got}
    assert all(e.event_id in written for e in events[:first_bad])
    assert events[first_bad].event_id not in written


def decoded_ok(r: redis.Redis, stream: str, partitions: int, skip: int) -> dict[int, list[Placed]]:
    return {
        p: [e for _, f in r.xrange(f"{stream}:{p}") for e in CODEC.decode_batch(f[b"events"])]
        for p in range(partitions)
        if p != skip
    }


def test_a_stopped_server_means_nothing_counts_as_written(start_redis: object) -> None:
    server = start_redis()  # type: ignore[operator]
    publisher = RedisPublisher(server.url, CODEC, stream="x", partitions=2)
    publisher.publish_batch(placed(10, 2))
    server.stop(kill=True)
    with pytest.raises(PublishError) as info:
        publisher.publish_batch(placed(10, 2))
    assert not hasattr(info.value, "batch_index")
    assert isinstance(info.value.__cause__, redis.ConnectionError)


# -- through the outbox relay --------------------------------------------------------------


def store_free(outbox: SqliteOutbox, events: list[Placed]) -> None:
    outbox.begin()
    outbox.append([CODEC.encode(e) for e in events], claimed=False)
    outbox.commit()


def pending(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM domainbus_outbox").fetchone()[0])


def test_outbox_relays_into_redis(r: redis.Redis, tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "app.db", CODEC)
    events = list(placed(2_500, keys=7))
    store_free(outbox, events)
    result = outbox.relay(RedisPublisher(r, CODEC, stream="o", partitions=4), batch_size=1000)
    assert result.delivered == 2_500
    assert outbox.pending() == 0
    got = [e for es in decoded(r, "o", 4).values() for e in es]
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in events)


@pytest.mark.parametrize("failure", ["wrong-type", "server-stopped"])
def test_a_failed_xadd_marks_nothing_delivered(
    failure: str, start_redis: object, tmp_path: Path
) -> None:
    server = start_redis()  # type: ignore[operator]
    outbox = SqliteOutbox(tmp_path / "app.db", CODEC)
    events = [Placed(aggregate_id="same", seq=n) for n in range(50)]  # one partition
    store_free(outbox, events)
    publisher = RedisPublisher(server.url, CODEC, stream="f", partitions=2)
    publisher.publish_batch([Placed(aggregate_id="warm-up", seq=0)])
    if failure == "wrong-type":
        target = partition_of("same", 2)
        client = redis.Redis.from_url(server.url)
        client.delete(f"f:{target}")
        client.set(f"f:{target}", "x")
    else:
        server.stop(kill=True)
    with pytest.raises(PublishError):
        outbox.relay(publisher)
    assert outbox.pending() == 50

"""A redis-py client from a URL or a client, checked for what domainbus needs (bytes replies),
and the partition count a stream was set up with."""

from __future__ import annotations

from typing import Any

import redis

from domainbus.redis.entries import meta_key

__all__ = ["connect", "stream_partitions"]


def connect(redis_or_url: Any) -> redis.Redis:
    """`redis.Redis.from_url(url)` for a str, or the given client (it must return bytes)."""
    if isinstance(redis_or_url, str):
        return redis.Redis.from_url(redis_or_url, health_check_interval=30)
    if not isinstance(redis_or_url, redis.Redis):
        raise TypeError(
            f"expected a redis URL or a redis.Redis client, not {type(redis_or_url).__qualname__}"
        )
    if redis_or_url.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError(
            "the redis client must return bytes: create it with decode_responses=False"
        )
    return redis_or_url


def stream_partitions(client: redis.Redis, stream: str, partitions: int | None) -> int:
    """The stream's partition count: recorded in `{stream}:meta` by the first publisher or
    worker (HSETNX), and checked against `partitions` by every later one."""
    key = meta_key(stream)
    if partitions is not None:
        client.hsetnx(key, "partitions", partitions)
    recorded = client.hget(key, "partitions")
    if recorded is None:
        raise ValueError(f"stream {stream!r} has no recorded partition count yet: pass partitions=")
    count = int(recorded)
    if partitions is not None and count != partitions:
        raise ValueError(
            f"stream {stream!r} was set up with {count} partitions, not {partitions}: "
            "events of one key would land in two partitions"
        )
    return count

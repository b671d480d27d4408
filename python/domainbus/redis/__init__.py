"""Redis Streams: publish events to partitioned streams, consume them in worker processes.

    publisher = RedisPublisher("redis://localhost:6379/0", codec, stream="orders")
    publisher.publish_batch(events)          # or outbox.relay(publisher)
    RedisWorker(redis, dispatcher, codec=codec, stream="orders", group="billing").run()

Loaded only when imported (`import domainbus` never imports redis-py). The modules:
`entries` (the stream entry format and the partition of a key), `publisher`, `leases` (which
worker consumes which partition), `worker`, `dead_letters`, `idempotency` (a Redis
`IdempotencyStore`), `cli` (the `publish`, `worker` and `dead-letters` commands).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from domainbus.redis.dead_letters import DeadLetters, RedisDeadLetter
    from domainbus.redis.entries import partition_of
    from domainbus.redis.idempotency import RedisIdempotencyStore
    from domainbus.redis.publisher import PublishError, RedisPublisher
    from domainbus.redis.worker import RedisWorker, WorkerStats

__all__ = [
    "DeadLetters",
    "PublishError",
    "RedisDeadLetter",
    "RedisIdempotencyStore",
    "RedisPublisher",
    "RedisWorker",
    "WorkerStats",
    "partition_of",
]

_HOMES = {
    "DeadLetters": "dead_letters",
    "RedisDeadLetter": "dead_letters",
    "partition_of": "entries",
    "RedisIdempotencyStore": "idempotency",
    "PublishError": "publisher",
    "RedisPublisher": "publisher",
    "RedisWorker": "worker",
    "WorkerStats": "worker",
}


def __getattr__(name: str) -> Any:
    """Import the defining module on first use (so `domainbus.redis.cli` needs no redis-py)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'domainbus.redis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"domainbus.redis.{home}"), name)

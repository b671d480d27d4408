"""`RedisIdempotencyStore`: which (handler, event) pairs ran, for handlers whose effects are not
in SQLite, usable with `idempotent(handler, store)`.

    store = RedisIdempotencyStore(redis, prefix="billing:once", ttl=7 * 24 * 3600)
    dispatcher.register_handler(Invoiced, idempotent(send_invoice, store, key="send_invoice"))

A handled event is a key `{prefix}:{handler key}:{event_id}` with a TTL (`ttl` seconds, default
7 days: longer than any redelivery can come late). The mark is set *after* the handler returned
(SET with EX): a handler that raises leaves no mark and runs again on the next delivery, and a
crash between the handler's effect and the SET runs the handler again too, so the effect
happens at least once, never zero times (marking before would turn that crash into a lost
effect). Two round trips per event. Only one worker consumes a partition at a time, so two
runs of one event at once can only happen when a lease changes hands while a batch is still
running (a worker stalled longer than its lease). For exactly-once effects keep them in the
same database transaction as the mark (`idempotent(handler, SqliteOutbox(...))`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from domainbus.redis.connection import connect
from domainbus.redis.entries import check_name, check_positive

__all__ = ["RedisIdempotencyStore"]


class RedisIdempotencyStore:
    """An `IdempotencyStore` in Redis (see the module doc for what it guarantees)."""

    def __init__(
        self, redis: Any, *, prefix: str = "domainbus:once", ttl: int = 7 * 24 * 3600
    ) -> None:
        self.client = connect(redis)
        self.prefix = check_name("prefix", prefix)
        self.ttl = check_positive("ttl", ttl)

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore(prefix={self.prefix!r}, ttl={self.ttl})"

    def key(self, handler_key: str, event_id: uuid.UUID) -> str:
        return f"{self.prefix}:{handler_key}:{event_id}"

    def run_once(self, key: str, event_id: uuid.UUID, call: Callable[[], object]) -> bool:
        """Run `call()` unless (key, event_id) is marked; mark it after `call` returned.
        Returns False when skipped; if `call` raises, nothing is marked."""
        if not isinstance(event_id, uuid.UUID):
            raise TypeError(f"event_id must be a uuid.UUID, not {type(event_id).__qualname__}")
        name = self.key(key, event_id)
        if self.client.exists(name):
            return False
        call()
        self.client.set(name, b"1", ex=self.ttl)
        return True

    def seen(self, key: str, event_id: uuid.UUID) -> bool:
        """Whether (key, event_id) is marked."""
        return bool(self.client.exists(self.key(key, event_id)))

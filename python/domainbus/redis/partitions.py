"""`Partitioner`: a batch of events split by the partition of their key (`entries.partition_of`).

The publisher groups every batch this way before framing it, so this is its per-event work.
The Python code here is the rule; when the Rust extension loads (and `DOMAINBUS_BACKEND` is
not "pure") `domainbus._core.group_by_partition` does the same in one call, about 10x faster
(it computes the bytes of str, bytes, int and uuid.UUID keys itself and hands any other key
to `entries.key_bytes`, so both give the same groups and raise the same errors).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from domainbus.redis.entries import KeyFunction, default_key, key_bytes

__all__ = ["Partitioner"]

_CACHE_SIZE = 100_000  # keys whose partition the Python version remembers (cleared beyond)
_CACHED = frozenset((str, int))  # the key types it remembers (exactly these types)

_Grouper = Callable[..., list[list[Any]]]


def _rust_grouper() -> _Grouper | None:
    """`domainbus._core.group_by_partition` when the Rust backend is the one in use."""
    import domainbus

    if getattr(domainbus, "backend_error", None) is not None or domainbus.BACKEND != "rust":
        return None
    try:
        from domainbus._core import group_by_partition
    except ImportError:  # an extension built before it had this function
        return None
    return group_by_partition


_RUST = _rust_grouper()


class Partitioner:
    """Splits events over `partitions` by `key(event)` (default: `entries.default_key`),
    keeping their order within each partition. `rust=False` forces the Python version."""

    def __init__(
        self, partitions: int, key: KeyFunction | None = None, *, rust: bool = True
    ) -> None:
        self.partitions = partitions
        self.key: KeyFunction = default_key if key is None else key
        self._custom_key = None if key is None or key is default_key else key
        self._rust = _RUST if rust else None
        self._cache: dict[object, int] = {}  # str and int keys -> partition (Python version)

    @property
    def uses_rust(self) -> bool:
        return self._rust is not None

    def group(self, events: list[Any]) -> list[list[Any]]:
        """`partitions` lists: the events of each partition, in the order given."""
        if self._rust is not None:
            return self._rust(events, self.partitions, key_bytes, self._custom_key)
        groups: list[list[Any]] = [[] for _ in range(self.partitions)]
        appends = [group.append for group in groups]
        for event, partition in zip(events, self.partitions_of(events), strict=True):
            appends[partition](event)
        return groups

    def partitions_of(self, events: list[Any]) -> list[int]:
        """The partition of each event (Python); repeated str and int keys come from a cache."""
        if self._custom_key is None:
            keys = [
                e.event_id if (k := getattr(e, "aggregate_id", None)) is None else k for e in events
            ]
        else:
            keys = list(map(self._custom_key, events))
        cache = self._cache
        if set(map(type, keys)) <= _CACHED:  # exact types only: True == 1 and 1.0 == 1
            try:
                return [cache[k] for k in keys]  # the usual case: aggregates seen before
            except KeyError:
                pass
        count, crc = self.partitions, zlib.crc32
        if len(cache) > _CACHE_SIZE:
            cache.clear()
        partitions = []
        for k in keys:
            cached = type(k) in _CACHED  # not event ids (UUIDs): they never come back
            partition = cache.get(k) if cached else None
            if partition is None:
                partition = crc(key_bytes(k)) % count
                if cached:
                    cache[k] = partition
            partitions.append(partition)
        return partitions

"""Events, a codec and helpers shared by the Redis tests (importable by worker subprocesses)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from domainbus import DomainEvent
from domainbus.codec import EventCodec

TESTS = Path(__file__).resolve().parent
PYTHON = TESTS.parent / "python"


class Placed(DomainEvent):
    """The test event: `aggregate_id` is the partition key, `seq` its position in that key."""

    aggregate_id: str
    seq: int


class Poison(DomainEvent):
    """An event whose handler always fails (in the dead-letter tests)."""

    aggregate_id: str
    seq: int


CODEC = EventCodec(Placed, Poison)


def placed(count: int, keys: int, start: int = 0) -> Iterator[Placed]:
    """`count` events round-robin over `keys` keys, `seq` counting per key from start // keys."""
    for n in range(start, start + count):
        yield Placed(aggregate_id=f"k{n % keys}", seq=n // keys)


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def entries(r: redis.Redis, stream: str, partitions: int) -> dict[int, list[Any]]:
    """Every entry of every partition, by partition: [(id, fields)]."""
    return {p: r.xrange(f"{stream}:{p}") for p in range(partitions)}


def decoded(r: redis.Redis, stream: str, partitions: int) -> dict[int, list[Any]]:
    """The events of every partition, in stream order."""
    return {
        p: [e for _, fields in found for e in CODEC.decode_batch(fields[b"events"])]
        for p, found in entries(r, stream, partitions).items()
    }


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process that imports domainbus and this module."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PYTHON), str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON_EXE = sys.executable

"""The publisher's `Partitioner`: the Rust `group_by_partition` gives the groups (and raises the
errors) of the Python rule, for every kind of key; the Python cache never answers for a key of
another type that compares equal (True == 1)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from domainbus.redis import partition_of
from domainbus.redis.partitions import Partitioner
from redis_support import Placed


def both(partitions: int, key: Callable[[Any], object] | None = None) -> list[Partitioner]:
    """The Python partitioner, and the Rust one (skipped when the extension lacks it)."""
    rust = Partitioner(partitions, key)
    if not rust.uses_rust:
        pytest.skip("the Rust extension (with group_by_partition) is not in use")
    return [Partitioner(partitions, key, rust=False), rust]


class NoAggregate:
    def __init__(self) -> None:
        self.event_id = uuid.uuid4()


class NoneAggregate:
    aggregate_id = None

    def __init__(self) -> None:
        self.event_id = uuid.uuid4()


class FailingAggregate:
    event_id = uuid.UUID(int=1)

    @property
    def aggregate_id(self) -> str:
        raise RuntimeError("no aggregate here")


class Text(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"always the same"


class Number(int):
    def __str__(self) -> str:
        return "not a number"


class SubUUID(uuid.UUID):
    pass


KEYS: list[object] = [
    "k0", "", "été", "日本", "🙂" * 40, b"bytes", b"", 0, 7, -7, 2**63 - 1, -(2**63),
    2**63, -(2**70), 10**300, uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4(),
    SubUUID(int=12345), Text("k0"), Number(5),
]  # fmt: skip


@pytest.mark.parametrize("partitions", [1, 3, 16, 1000])
def test_rust_groups_as_python_for_every_key_type(partitions: int) -> None:
    items = [(n, key) for n, key in enumerate(KEYS * 3)]
    python, rust = both(partitions, key=lambda item: item[1])
    groups = rust.group(items)
    assert groups == python.group(items)
    assert len(groups) == partitions
    assert [item for group in groups for item in group] != items or partitions == 1
    for p, group in enumerate(groups):
        assert sorted(group) == group  # the order given, within a partition
        for _, key in group:
            if type(key) in (str, bytes, int, uuid.UUID):
                assert partition_of(key, partitions) == p


def test_rust_default_key_is_the_aggregate_id_else_the_event_id() -> None:
    events: list[Any] = [Placed(aggregate_id=f"k{n % 7}", seq=n) for n in range(100)]
    events += [NoAggregate() for _ in range(50)] + [NoneAggregate() for _ in range(50)]
    python, rust = both(16)
    assert rust.group(events) == python.group(events)
    for event in events[100:]:
        p = partition_of(event.event_id, 16)
        assert event in rust.group([event])[p]


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (True, TypeError), (1.0, TypeError), (None, TypeError), (object(), TypeError),
        ("\ud800", UnicodeEncodeError), (10**5000, ValueError),
    ],
    ids=["bool", "float", "None", "object", "surrogate", "too-many-digits"],
)  # fmt: skip
def test_rust_raises_what_python_raises(key: object, error: type[Exception]) -> None:
    for partitioner in both(16, key=lambda item: item):
        partitioner.group([1, "k0"])  # fills the Python cache with 1 (True == 1)
        with pytest.raises(error):
            partitioner.group(["k0", key])


def test_errors_of_the_key_and_of_the_attribute_propagate() -> None:
    def failing(event: object) -> object:
        raise LookupError("no key")

    for partitioner in both(4, key=failing):
        with pytest.raises(LookupError, match="no key"):
            partitioner.group([1])
    for partitioner in both(4):
        with pytest.raises(RuntimeError, match="no aggregate here"):
            partitioner.group([FailingAggregate()])
        assert partitioner.group([]) == [[], [], [], []]

"""AggregateRoot: record and pull events on plain classes, dataclasses and msgspec Structs."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainbus import DomainEvent
from domainbus.aggregate import AggregateRoot


class Renamed(DomainEvent):
    name: str


class Plain(AggregateRoot):
    def __init__(self, name: str) -> None:
        self.name = name


class Slotted(AggregateRoot):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


@dataclasses.dataclass
class Data(AggregateRoot):
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenSlottedData(AggregateRoot):
    name: str


class Struct(AggregateRoot, msgspec.Struct):
    name: str


class FrozenStruct(AggregateRoot, msgspec.Struct, frozen=True):
    name: str


class ArrayStructNoGC(AggregateRoot, msgspec.Struct, array_like=True, gc=False):
    name: str


KINDS: list[Callable[[str], Any]] = [
    Plain,
    Slotted,
    Data,
    FrozenSlottedData,
    Struct,
    FrozenStruct,
    ArrayStructNoGC,
]


@pytest.fixture(params=KINDS, ids=lambda k: k.__name__)
def kind(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    return request.param  # type: ignore[no-any-return]


def test_pull_returns_events_in_recording_order_and_clears(kind: Callable[[str], Any]) -> None:
    aggregate = kind("ada")
    events = [Renamed(name=n) for n in ("b", "c", "d")]
    for event in events:
        aggregate.record(event)
    assert aggregate.pull_events() == events
    assert aggregate.pull_events() == []
    aggregate.record(events[0])
    assert aggregate.pull_events() == [events[0]]


def test_pulled_list_belongs_to_the_caller(kind: Callable[[str], Any]) -> None:
    aggregate = kind("ada")
    first = aggregate.pull_events()
    first.append("mutated")
    assert aggregate.pull_events() == []
    aggregate.record(Renamed(name="x"))
    pulled = aggregate.pull_events()
    pulled.clear()
    aggregate.record(Renamed(name="y"))
    assert [e.name for e in aggregate.pull_events()] == ["y"]


@pytest.mark.parametrize(
    "kind",
    [Data, FrozenSlottedData, Struct, FrozenStruct, ArrayStructNoGC],
    ids=lambda k: k.__name__,
)
def test_pending_events_are_not_fields(kind: Callable[[str], Any]) -> None:
    """Value equality, repr, hash and encoding see the declared fields only."""
    recorded, fresh = kind("ada"), kind("ada")
    recorded.record(Renamed(name="x"))
    assert recorded == fresh
    assert repr(recorded) == repr(fresh)
    if isinstance(recorded, msgspec.Struct):
        assert msgspec.msgpack.encode(recorded) == msgspec.msgpack.encode(fresh)
    if kind in (FrozenSlottedData, FrozenStruct):
        assert hash(recorded) == hash(fresh)


def test_frozen_aggregates_stay_frozen() -> None:
    for kind in (FrozenSlottedData, FrozenStruct):
        aggregate = kind("ada")
        aggregate.record(Renamed(name="x"))
        with pytest.raises(AttributeError):
            aggregate.name = "bob"


@pytest.mark.parametrize("kind", [Plain, Slotted, Data], ids=lambda k: k.__name__)
def test_copies_and_pickles_have_their_own_pending_list(kind: Callable[[str], Any]) -> None:
    aggregate = kind("ada")
    aggregate.record("e1")
    duplicate = copy.copy(aggregate)
    duplicate.record("e2")
    restored = pickle.loads(pickle.dumps(aggregate))
    assert aggregate.pull_events() == ["e1"]
    assert duplicate.pull_events() == ["e1", "e2"]
    assert restored.pull_events() == ["e1"]


@pytest.mark.parametrize("kind", [FrozenSlottedData, Struct], ids=lambda k: k.__name__)
def test_struct_and_slots_dataclass_copies_start_empty(kind: Callable[[str], Any]) -> None:
    aggregate = kind("ada")
    aggregate.record("e1")
    assert copy.copy(aggregate).pull_events() == []
    assert aggregate.pull_events() == ["e1"]


def test_recording_a_class_is_an_error(kind: Callable[[str], Any]) -> None:
    aggregate = kind("ada")
    with pytest.raises(TypeError, match="event instance, not the class Renamed"):
        aggregate.record(Renamed)
    assert aggregate.pull_events() == []


def test_a_base_with_its_own_slot_layout_is_not_supported() -> None:
    class Point:
        __slots__ = ("x",)

    with pytest.raises(TypeError, match="lay-out conflict"):
        type("Broken", (AggregateRoot, Point), {})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.none()), max_size=30))
def test_matches_a_list_model(operations: list[int | None]) -> None:
    """Any interleaving of record(n) and pull (None) behaves like a list that pull empties."""
    aggregate, model = FrozenStruct("ada"), []
    for op in operations:
        if op is None:
            assert aggregate.pull_events() == model
            model = []
        else:
            aggregate.record(op)
            model.append(op)
    assert aggregate.pull_events() == model

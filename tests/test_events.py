"""DomainEvent: frozen, keyword-only, tagged msgspec structs with a UUIDv7 id and a UTC time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from domainbus import DomainEvent
from domainbus._ids import py_new_event_id, py_utc_now


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


class OrderPlaced(DomainEvent, tag="order.placed"):
    order_id: int


def make_user() -> UserRegistered:
    return UserRegistered(user_id="u-1", username="ada", email="ada@example.com")


def test_defaults_fill_id_and_time() -> None:
    before = datetime.now(UTC)
    event = make_user()
    after = datetime.now(UTC)
    assert isinstance(event.event_id, uuid.UUID)
    assert event.event_id.version == 7
    assert event.event_id.variant == uuid.RFC_4122
    assert event.occurred_on.tzinfo is not None
    assert event.occurred_on.utcoffset() == timedelta(0)
    assert (
        before - timedelta(milliseconds=1) <= event.occurred_on <= after + timedelta(milliseconds=1)
    )


def test_event_ids_are_unique_and_increasing() -> None:
    ids = [make_user().event_id for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # UUIDv7 with a per-process counter: time-ordered


@pytest.mark.parametrize("generate", [py_new_event_id], ids=["python-twin"])
def test_python_twin_ids_have_the_same_layout(generate: object) -> None:
    ids = [generate() for _ in range(5_000)]  # type: ignore[operator]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_id_timestamp_is_now() -> None:
    millis = make_user().event_id.int >> 80
    now = datetime.now(UTC).timestamp() * 1000
    assert abs(now - millis) < 5_000


def test_rust_and_python_clocks_agree() -> None:
    from domainbus._core import utc_now

    assert abs(utc_now() - py_utc_now()) < timedelta(seconds=1)
    assert utc_now().tzinfo is UTC or utc_now().utcoffset() == timedelta(0)


def test_events_are_frozen_with_keyword_only_id_and_time() -> None:
    event = make_user()
    with pytest.raises(AttributeError):
        event.username = "bob"  # type: ignore[misc]
    with pytest.raises(TypeError):
        UserRegistered("u-1", "ada", "ada@example.com", uuid.uuid4())  # type: ignore[call-arg]


def test_mixed_events_round_trip_as_a_tagged_union() -> None:
    events = [make_user(), OrderPlaced(order_id=7), make_user()]
    for encode, decode in [
        (msgspec.msgpack.encode, msgspec.msgpack.decode),
        (msgspec.json.encode, msgspec.json.decode),
    ]:
        data = encode(events)
        assert decode(data, type=list[UserRegistered | OrderPlaced]) == events
    raw = msgspec.json.decode(msgspec.json.encode(events))
    assert [r["type"] for r in raw] == ["UserRegistered", "order.placed", "UserRegistered"]


def test_explicit_id_and_time_are_kept() -> None:
    when = datetime(2020, 1, 1, tzinfo=UTC)
    ident = uuid.uuid4()
    event = OrderPlaced(order_id=1, event_id=ident, occurred_on=when)
    assert (event.event_id, event.occurred_on) == (ident, when)

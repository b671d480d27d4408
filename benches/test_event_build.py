"""Building an event with its default `event_id` (UUIDv7, made in Rust) and `occurred_on`,
against one `uuid.uuid4()` call (issue 2's target: at most a quarter of it).

The parts are timed too, so that a missed target shows where the time goes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domainbus import DomainEvent
from domainbus._ids import new_event_id, utc_now


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


def build_event() -> UserRegistered:
    return UserRegistered(user_id="user-1", username="alice", email="alice@example.com")


EVENT_ID, NOW = new_event_id(), utc_now()


def build_event_given_defaults() -> UserRegistered:
    return UserRegistered(
        user_id="user-1",
        username="alice",
        email="alice@example.com",
        event_id=EVENT_ID,
        occurred_on=NOW,
    )


CASES = {
    "event": build_event,  # what the target is about
    "uuid4": uuid.uuid4,  # the yardstick
    "event-given-id-and-time": build_event_given_defaults,  # the Struct alone
    "new_event_id": new_event_id,
    "utc_now": utc_now,
}


@pytest.mark.parametrize("case", list(CASES))
def test_event_build(benchmark: Any, ledger: Any, case: str) -> None:
    benchmark.group = "event build"
    benchmark(CASES[case])
    ledger.record(f"build:{case}", benchmark)


def test_default_fields_are_fresh() -> None:
    first, second = build_event(), build_event()
    assert first.event_id != second.event_id
    assert first.event_id.version == 7
    assert first.occurred_on.tzinfo is not None

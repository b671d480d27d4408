"""Building an event with its default `event_id` (UUIDv7, made in Rust) and `occurred_on`,
against one `uuid.uuid4()` call (issue 2's target: at most a quarter of it).

The parts are timed too, so that a missed target shows where the time goes. Each benchmark
makes `REPEAT` calls from a plain loop, so pytest-benchmark's own per-call overhead (tens of ns,
as much as an id) does not flatten the ratio; the ledger records the time per call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest

from domainbus import DomainEvent
from domainbus._ids import new_event_id, utc_now


class UserRegistered(DomainEvent):  # the article's example event
    user_id: str
    username: str
    email: str


def build_event() -> UserRegistered:
    return UserRegistered(user_id="user-1", username="alice", email="alice@example.com")


class PlainUserRegistered(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The same fields and defaults on a bare msgspec.Struct (no DomainEvent metaclass): shows
    what the class machinery of DomainEvent adds to building an event."""

    event_id: uuid.UUID = msgspec.field(default_factory=new_event_id)
    occurred_on: datetime = msgspec.field(default_factory=utc_now)
    user_id: str
    username: str
    email: str


def build_plain_struct() -> PlainUserRegistered:
    return PlainUserRegistered(user_id="user-1", username="alice", email="alice@example.com")


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
    "plain-struct-event": build_plain_struct,  # the same without DomainEvent's metaclass
    "new_event_id": new_event_id,
    "utc_now": utc_now,
}


REPEAT = 1_000


def repeated(make: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(REPEAT):
            make()

    return run


@pytest.mark.parametrize("case", list(CASES))
def test_event_build(benchmark: Any, ledger: Any, case: str) -> None:
    benchmark.group = f"event build (x{REPEAT})"
    benchmark(repeated(CASES[case]))
    ledger.record(f"build:{case}", benchmark, REPEAT)


def test_default_fields_are_fresh() -> None:
    first, second = build_event(), build_event()
    assert first.event_id != second.event_id
    assert first.event_id.version == 7
    assert first.occurred_on.tzinfo is not None

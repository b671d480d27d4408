"""Event-sourced aggregates and the repository, on both backends and both stores."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import domainbus
import eventstore_support as support
from domainbus import ConcurrencyError, DomainEvent, UnitOfWork
from domainbus.codec import EventCodec
from domainbus.eventstore import Aggregate, AggregateNotFound, Repository, SqliteEventStore, applies
from domainbus.outbox import SqliteOutbox
from eventstore_support import CODEC, Closed, Deposited, Opened, Withdrawn

store_kind, store_url_of = support.store_kind, support.store_url_of
make_store, store = support.make_store, support.store


@pytest.fixture(autouse=True)
def use_backend(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutators and handlers are dispatched by the backend under test."""
    monkeypatch.setattr(domainbus, "Dispatcher", backend.Dispatcher)


class Account(Aggregate):
    owner: str
    balance: int
    tags: set[str]
    key: uuid.UUID
    folded = 0  # mutator calls, across instances (to see what a rebuild folded)

    @classmethod
    def open(cls, account_id: str, owner: str) -> Account:
        account = cls(account_id)
        account.record(Opened(account_id=account_id, owner=owner))
        return account

    def deposit(self, amount: int) -> None:
        self.record(Deposited(account_id=self.id, amount=amount))

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.record(Withdrawn(account_id=self.id, amount=amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner, self.balance, self.tags = event.owner, 0, set()
        self.key = uuid.UUID(int=len(event.owner))

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        type(self).folded += 1
        self.balance += event.amount
        self.tags.add(f"d{event.amount}")

    @applies(Withdrawn)
    def _withdrawn(self, event: Withdrawn) -> None:
        type(self).folded += 1
        self.balance -= event.amount


def test_save_then_get_rebuilds_the_same_state(store: Any) -> None:
    repository = Repository(store, Account, page_size=3)
    account = Account.open("acc-1", "ada")
    for amount in range(1, 11):
        account.deposit(amount)
    account.withdraw(5)
    assert (account.version, account.balance, len(account.pending_events)) == (12, 50, 12)
    saved = repository.save(account)
    assert len(saved) == 12 and account.pending_events == []
    rebuilt = repository.get("acc-1")
    assert (rebuilt.version, rebuilt.balance, rebuilt.owner) == (12, 50, "ada")
    assert rebuilt.tags == account.tags
    assert repository.save(rebuilt) == []  # nothing pending: nothing written


def test_get_with_a_version_gives_the_state_back_then(store: Any) -> None:
    repository = Repository(store, Account)
    account = Account.open("acc-1", "ada")
    for amount in (10, 20, 30):
        account.deposit(amount)
    repository.save(account)
    assert [repository.get("acc-1", version=v).balance for v in (1, 2, 3, 4)] == [0, 10, 30, 60]
    assert repository.get("acc-1", version=2).version == 2
    with pytest.raises(ValueError, match="has 4 events, not 5"):
        repository.get("acc-1", version=5)
    with pytest.raises(AggregateNotFound, match="no events for aggregate 'nobody'"):
        repository.get("nobody")


def test_a_stale_aggregate_cannot_be_saved(make_store: Any) -> None:
    repository = Repository(make_store(), Account)
    other = Repository(make_store(), Account)
    repository.save(Account.open("acc-1", "ada"))
    first, second = repository.get("acc-1"), other.get("acc-1")
    first.deposit(5)
    second.deposit(7)
    repository.save(first)
    with pytest.raises(ConcurrencyError) as caught:
        other.save(second)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert len(second.pending_events) == 1  # kept: the caller may reload and retry
    assert repository.get("acc-1").balance == 5


class Fee(Withdrawn):
    """A withdrawal subclass: routed to the Withdrawn mutator too (MRO)."""


class Business(Account):
    class_version = 1

    @applies(Fee)
    def _fee(self, event: Fee) -> None:
        self.fees = getattr(self, "fees", 0) + event.amount

    def _deposited(self, event: Deposited) -> None:  # overridden without a mark: not a mutator
        raise AssertionError("not a mutator any more")

    @applies(Deposited)
    def _deposit_twice(self, event: Deposited) -> None:
        self.balance += 2 * event.amount


def test_mutators_follow_the_handler_routing_rules(make_store: Any) -> None:
    store = make_store(EventCodec(Opened, Deposited, Withdrawn, Fee, Closed))
    repository = Repository(store, Business)
    business = Business.open("b-1", "grace")
    business.deposit(10)  # only the subclass's mutator: balance += 20
    business.record(Fee(account_id="b-1", amount=3))  # Withdrawn's mutator and Fee's
    assert (business.balance, business.fees) == (17, 3)
    repository.save(business)
    rebuilt = repository.get("b-1")
    assert (rebuilt.balance, rebuilt.fees) == (17, 3)
    rebuilt.record(Closed(account_id="b-1"))  # no mutator: applied as a no-op, still recorded
    assert rebuilt.version == 4 and len(rebuilt.pending_events) == 1


def test_a_failing_mutator_propagates_and_the_event_is_not_recorded(store: Any) -> None:
    class Strict(Account):
        @applies(Closed)
        def _closed(self, event: Closed) -> None:
            raise RuntimeError("cannot close")

    account = Strict.open("s-1", "ada")
    with pytest.raises(RuntimeError, match="cannot close"):
        account.record(Closed(account_id="s-1"))
    assert account.version == 1 and len(account.pending_events) == 1


def test_snapshots_are_written_every_n_events_and_used_by_get(store: Any) -> None:
    repository = Repository(store, Account, snapshot_every=5)
    account = Account.open("acc-1", "ada")
    for amount in range(1, 4):
        account.deposit(amount)
    repository.save(account)  # version 4: no snapshot yet
    assert store.load_snapshot("acc-1") is None
    account.deposit(4)
    account.deposit(5)
    repository.save(account)  # version 6 crosses 5: a snapshot at version 6
    snapshot = store.load_snapshot("acc-1")
    assert snapshot is not None and snapshot.version == 6
    account.deposit(6)
    repository.save(account)
    Account.folded = 0
    rebuilt = repository.get("acc-1")
    assert Account.folded == 1  # only the event after the snapshot was folded
    assert (rebuilt.version, rebuilt.balance, rebuilt.owner) == (7, 21, "ada")
    assert rebuilt.tags == {f"d{n}" for n in range(1, 7)}  # a set again, not a list
    assert rebuilt.key == uuid.UUID(int=3)  # a UUID again, not a str
    Account.folded = 0
    assert repository.get("acc-1", version=5).balance == 10  # before the snapshot: a full fold
    assert Account.folded == 4


def test_a_snapshot_of_another_class_version_is_ignored(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = Repository(store, Account, snapshot_every=2)
    account = Account.open("acc-1", "ada")
    for amount in range(4):
        account.deposit(amount)
    repository.save(account)
    assert store.load_snapshot("acc-1") is not None
    monkeypatch.setattr(Account, "class_version", 2)
    Account.folded = 0
    assert repository.get("acc-1").balance == 6
    assert Account.folded == 4  # every event folded again


def test_the_store_the_outbox_and_the_users_rows_commit_together(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    connection.execute("CREATE TABLE owners (name TEXT PRIMARY KEY)")
    outbox = SqliteOutbox(connection, CODEC)
    store = SqliteEventStore(connection, CODEC)
    repository = Repository(store, Account)
    seen: list[DomainEvent] = []
    dispatcher = domainbus.Dispatcher()
    dispatcher.register_handler(DomainEvent, seen.append)

    with pytest.raises(RuntimeError), UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        account = Account.open("acc-1", "ada")
        connection.execute("INSERT INTO owners VALUES ('ada')")
        for event in repository.save(account):
            uow.record(event)
        raise RuntimeError("undo everything")
    assert store.version("acc-1") == 0 and outbox.pending() == 0 and seen == []
    assert connection.execute("SELECT count(*) FROM owners").fetchone() == (0,)

    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        account = Account.open("acc-1", "ada")
        account.deposit(5)
        connection.execute("INSERT INTO owners VALUES ('ada')")
        for event in repository.save(account):
            uow.record(event)
    assert store.version("acc-1") == 2
    assert connection.execute("SELECT count(*) FROM owners").fetchone() == (1,)
    assert [type(e) for e in seen] == [Opened, Deposited]  # dispatched after the commit
    assert outbox.relay(dispatcher).delivered == 0

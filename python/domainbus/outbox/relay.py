"""`relay`: deliver an outbox's free rows in batches, at least once.

Each batch is claimed, decoded, handed to the target's `dispatch_batch` in one call, then
settled. How a claim holds its rows is the store's (`OutboxStore.claim_locks`):

- row locks (PostgreSQL): one transaction claims the batch (`SELECT ... FOR UPDATE SKIP
  LOCKED`), stays open while it is dispatched, deletes the delivered rows and commits: one
  write a row. Other relays skip the locked rows; a crash or a lost connection aborts the
  transaction and frees them, so nothing counts as delivered that was not. What the handlers
  write through the outbox's connection is part of that transaction;
- claims written into the store (SQLite, where an open write transaction would stop every
  other writer): the claim commits before the dispatch; the delivered rows are deleted in one
  transaction together with whatever the handlers wrote through the outbox's connection
  meanwhile, and the same transaction claims the next batch (one commit, so one sync at
  synchronous=FULL, per batch).

Rows that do not decode go to the dead-letter table at once, reported by id, and never stop
the relay.

The target is any object with `dispatch_batch(events) -> int` (a `Dispatcher` of either
backend, or a broker publisher). What it delivered is read from how its call ended, never from
how far it iterated the batch (rule 12 of `domainbus.pure.dispatcher`):

- a normal return: every event of the batch was delivered;
- an exception with an int `batch_index` inside the batch: events [0, batch_index) were
  delivered; the event at `batch_index` failed: its attempt is counted (unless the exception is
  not an `Exception`, e.g. KeyboardInterrupt) and its row goes to the dead-letter table after
  `max_attempts` failures, so one bad event cannot stop the relay for good; the events after it
  were not attempted and are released with no attempt counted;
- an `ExceptionGroup` every member of which has such a `batch_index` (on_error="collect"):
  every event was attempted; the members' rows failed (one attempt each), the others were
  delivered. A lone exception out of a "collect" dispatcher (KeyboardInterrupt, a raising
  `on_unhandled`) dropped the failures collected before it, so it counts as the next case;
- any other exception (no usable `batch_index`: a broker that is down, a bug in the target):
  none of the batch counts as delivered; all its rows are released with no attempt counted, so
  an outage dead-letters nothing. The exception propagates; retrying later (with backoff) is
  the caller's job.

In every failure case the store is settled first, the exception gets a note saying what
happened to the rows, and it propagates; the next relay starts again at the first row not
delivered. If the handlers had written through the outbox's connection, those writes are rolled
back (`OutboxStore.discard_handler_writes`) and no row of the batch counts as delivered (their
writes and the delivery records stay consistent); the failing row's attempt is still counted.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from domainbus._log import log_failure
from domainbus._trace import incoming
from domainbus.delivery import batch_index, failed_indexes
from domainbus.outbox.failures import settle_after_failure
from domainbus.transactions import describe_error

if TYPE_CHECKING:
    from domainbus.outbox.store import OutboxBatch, OutboxStore, RelayResult

__all__ = ["AsyncBatchDispatcher", "BatchDispatcher", "relay", "relay_async"]

logger = logging.getLogger("domainbus.outbox")


class BatchDispatcher(Protocol):
    """What `relay` delivers to: a `Dispatcher` of either backend, or a broker publisher."""

    def dispatch_batch(self, events: Iterable[object]) -> int: ...


class AsyncBatchDispatcher(Protocol):
    """What `relay_async` delivers to (a `Dispatcher` of either backend)."""

    def dispatch_batch_async(
        self, events: Iterable[object], *, concurrent: bool = False
    ) -> Coroutine[Any, Any, int]: ...


Failures = list[tuple[int, BaseException]]
"""(index in the batch of the failing event, exception) pairs."""


class _Outcome:
    """What one `dispatch_batch` call delivered, read from how it ended (the module doc)."""

    __slots__ = ("delivered", "error", "failures")

    def __init__(
        self, delivered: list[int], failures: Failures, error: BaseException | None
    ) -> None:
        self.delivered = delivered  # indexes in the batch of the events delivered
        self.failures = failures  # (index, exception) of the events that failed
        self.error = error  # what to raise once settled (None: the call returned)


def _outcome(size: int, exc: BaseException | None, collect: bool) -> _Outcome:
    if exc is None:
        return _Outcome(list(range(size)), [], None)
    index = batch_index(exc, size)
    if index is not None and not (collect and not isinstance(exc, BaseExceptionGroup)):
        # Under "collect" a lone exception (KeyboardInterrupt, a raising on_unhandled) drops
        # the failures collected before it: nothing before it is known to be delivered.
        return _Outcome(list(range(index)), [(index, exc)], exc)
    indexes = failed_indexes(exc, size)
    if indexes is not None:
        assert isinstance(exc, BaseExceptionGroup)
        failures: Failures = list(zip(indexes, exc.exceptions, strict=True))
        failing = set(indexes)
        return _Outcome([i for i in range(size) if i not in failing], failures, exc)
    return _Outcome([], [], exc)


def relay(
    store: OutboxStore,
    dispatcher: BatchDispatcher,
    *,
    batch_size: int = 1000,
    take_over: bool = False,
) -> RelayResult:
    """Claim, decode, deliver and settle batches of up to `batch_size` rows until none is free.

    `dispatcher`: anything with `dispatch_batch(events) -> int`. `take_over=True` also claims
    rows other outboxes still hold (at start-up, when no other process can be relaying).
    Returns the number of events delivered and the dead-lettered row ids; a failure propagates
    after the store is settled (see the module doc for what counts as delivered).
    """
    _check_dispatcher(dispatcher, "dispatch_batch")
    dispatch = dispatcher.dispatch_batch
    run = _Relay(store, batch_size, take_over, _collects(dispatcher))
    while (events := run.next_events()) is not None:
        try:
            dispatch(events)
        except BaseException as exc:
            run.settle(exc)
        else:
            run.settle(None)
    return run.result()


async def relay_async(
    store: OutboxStore,
    dispatcher: AsyncBatchDispatcher,
    *,
    batch_size: int = 1000,
    take_over: bool = False,
    concurrent: bool = False,
) -> RelayResult:
    """`relay` with `dispatch_batch_async`, for handlers that are coroutine functions.

    The database work stays synchronous (on the event loop's thread); `concurrent=True` runs
    the handlers of one event together. Only the dispatch differs from `relay`: both drive
    the same `_Relay`.
    """
    _check_dispatcher(dispatcher, "dispatch_batch_async")
    dispatch = dispatcher.dispatch_batch_async
    run = _Relay(store, batch_size, take_over, _collects(dispatcher))
    while (events := run.next_events()) is not None:
        try:
            await dispatch(events, concurrent=concurrent)
        except BaseException as exc:
            run.settle(exc)
        else:
            run.settle(None)
    return run.result()


def _check_dispatcher(dispatcher: object, method: str) -> None:
    if not callable(getattr(dispatcher, method, None)):
        raise TypeError(f"dispatcher must have {method}(), not {type(dispatcher).__qualname__}")


def _collects(dispatcher: object) -> bool:
    """Whether the dispatcher's policy is "collect" (its ExceptionGroup lists every failure)."""
    return bool(getattr(dispatcher, "on_error", "raise") == "collect")


class _Relay:
    """The relay's bookkeeping, whatever dispatches: claim, decode, trace, settle, count.

    `relay` and `relay_async` only call the dispatcher between `next_events` and `settle`.
    """

    def __init__(self, store: OutboxStore, batch_size: int, take_over: bool, collect: bool) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, not {batch_size!r}")
        if store.in_transaction:
            raise RuntimeError("relay needs the outbox's connection without an open transaction")
        self.store = store
        self.collect = collect
        self.limit = batch_size
        self.take_over = take_over
        self.locks = bool(store.claim_locks)
        self.after = 0  # the last id claimed: the next claim looks past it first
        self.delivered = 0
        self.dead_lettered: list[int] = []
        self.ids: list[int] = []
        self.events: list[Any] = []
        self.dead: list[tuple[int, str]] = []
        self.token: Any = None
        self.batch: OutboxBatch | None = (
            self._open_claim() if self.locks else _in_transaction(store, self._claim)[0]
        )

    def _claim(self) -> OutboxBatch | None:
        batch = self.store.claim(self.limit, take_over=self.take_over, after=self.after)
        if batch is not None:
            self.after = batch.ids[-1]
        return batch

    def _open_claim(self) -> OutboxBatch | None:
        """Claim in a new transaction, left open while the batch is dispatched and settled
        (a store whose claims are row locks); ended at once when no row is free."""
        store = self.store
        store.begin()
        try:
            batch = self._claim()
            if batch is None:
                store.commit()
        except BaseException:
            store.rollback()
            raise
        return batch

    def next_events(self) -> list[Any] | None:
        """The decoded events of the claimed batch (bad rows set aside), or None when done;
        the rows' stored traceparents are handed to the dispatcher (`domainbus.observe`)."""
        batch = self.batch
        if batch is None:
            return None
        self.ids, self.events, self.dead = _decode(self.store, batch)
        if any(batch.traceparents):
            by_id = dict(zip(batch.ids, batch.traceparents, strict=True))
            self.token = incoming.set([by_id.get(i) for i in self.ids])
        return self.events

    def settle(self, exc: BaseException | None) -> None:
        """Settle the batch after its dispatch ended (with `exc`, or normally); then re-raise."""
        if self.token is not None:
            incoming.reset(self.token)
            self.token = None
        store, batch = self.store, self.batch
        assert batch is not None
        outcome = _outcome(len(self.ids), exc, self.collect)
        if outcome.error is not None:
            self.batch = None
            self.dead_lettered += _settle_failures(
                store, batch, self.ids, self.events, outcome, self.dead
            )
            raise outcome.error
        settle = functools.partial(store.settle, batch, delivered=self.ids, dead=self.dead)
        if self.locks:  # the claim's transaction settles the batch; the next claim opens another
            moved = _in_transaction(store, settle)[0]
            self.batch = None
        else:  # one transaction settles this batch (with the handlers' writes), claims the next
            moved, self.batch = _in_transaction(store, settle, self._claim)
        self.dead_lettered += moved
        self.delivered += len(self.ids)
        if self.locks:
            self.batch = self._open_claim()

    def result(self) -> RelayResult:
        from domainbus.outbox.store import RelayResult

        return RelayResult(self.delivered, tuple(self.dead_lettered))


def _decode(
    store: OutboxStore, batch: OutboxBatch
) -> tuple[list[int], list[Any], list[tuple[int, str]]]:
    """(ids, events) of the rows that decode, and (id, error) of those that do not."""
    decode = store.decode
    try:
        return batch.ids, [decode(payload) for payload in batch.payloads], []
    except Exception:
        pass  # find the bad rows one by one
    ids: list[int] = []
    events: list[Any] = []
    dead: list[tuple[int, str]] = []
    for row_id, payload in zip(batch.ids, batch.payloads, strict=True):
        try:
            events.append(decode(payload))
        except Exception as exc:
            dead.append((row_id, f"undecodable: {describe_error(exc)}"))
        else:
            ids.append(row_id)
    return ids, events, dead


def _in_transaction(store: OutboxStore, *steps: Callable[[], Any]) -> list[Any]:
    """Run `steps` in one transaction (the one the handlers' writes opened, if any), commit."""
    if not store.in_transaction:
        store.begin()
    try:
        results = [step() for step in steps]
        store.commit()
    except BaseException:
        store.rollback()
        raise
    return results


def _settle_failures(
    store: OutboxStore,
    batch: OutboxBatch,
    ids: list[int],
    events: list[Any],
    outcome: _Outcome,
    dead: list[tuple[int, str]],
) -> list[int]:
    """Settle a batch whose dispatch raised (`domainbus.outbox.failures` says how), and note
    the outcome on the exception(s).

    The outcome's delivered rows are deleted; each failing row counts one attempt, however many
    of its handlers failed (unless the exception is not an Exception, e.g. KeyboardInterrupt);
    the rest is released uncounted.
    """
    error = outcome.error
    assert error is not None
    first_failures: dict[int, BaseException] = {}
    for index, exc in outcome.failures:
        first_failures.setdefault(index, exc)
    # what was attempted is a prefix of the batch: the delivered events and the failing ones
    attempted = max([*outcome.delivered, *first_failures], default=-1) + 1
    settled = settle_after_failure(
        store, batch, ids, attempted, list(first_failures.items()), dead=dead
    )
    if settled.rolled_back:
        outcome_text = "the handlers' writes were rolled back and the whole batch stays pending"
    else:
        outcome_text = f"{len(settled.delivered)} other event(s) of the batch were delivered"
    moved = settled.dead_lettered
    if not outcome.failures:
        error.add_note(
            f"domainbus: relaying outbox rows {ids[0] if ids else '-'}..{ids[-1] if ids else '-'}:"
            f" the exception has no batch_index naming an event of the batch, so none of its "
            f"{len(ids)} event(s) counts as delivered; they stay pending, no attempt counted"
        )
        if isinstance(error, Exception):
            log_failure(
                logger, logging.WARNING,
                "relaying outbox rows %s..%s: the dispatch failed with no batch_index; the %d "
                "event(s) stay pending, no attempt counted", error, None,
                ids[0] if ids else "-", ids[-1] if ids else "-", len(ids),
            )  # fmt: skip
    for index, exc in outcome.failures:
        where = "moved to the dead-letter table" if ids[index] in moved else "stays pending"
        exc.add_note(f"domainbus: relaying outbox row {ids[index]}, which {where}; {outcome_text}")
        if isinstance(exc, Exception):
            log_failure(
                logger, logging.ERROR if ids[index] in moved else logging.WARNING,
                "relaying outbox row %d failed; it %s; %s", exc, events[index],
                ids[index], where, outcome_text,
            )  # fmt: skip
    return moved

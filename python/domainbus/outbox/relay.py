"""`relay`: deliver an outbox's free rows in batches, at least once.

Each batch is claimed, decoded, dispatched with one `dispatch_batch` call, then settled: its
rows are deleted in one transaction, together with whatever the handlers wrote through the
outbox's connection meanwhile, and the same transaction claims the next batch (one commit,
so one sync at synchronous=FULL, per batch). Rows that do not decode go to the dead-letter
table at once, reported by id, and never stop the relay.

When a handler raises (dispatcher `on_error="raise"`), the events before the failing one are
settled as delivered, the failing row's attempt is counted, the rest of the batch is released
and the exception propagates; the next relay starts again at the failing row. After
`max_attempts` failures a row goes to the dead-letter table, so one bad event cannot stop the
relay for good. If the handlers had written through the outbox's connection, those writes are
rolled back and the whole batch is released instead (their writes and the delivery records
stay consistent). With `on_error="collect"` each event is dispatched on its own and every
failing row is counted; the failures are raised together at the end.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from domainbus.uow import describe_error

if TYPE_CHECKING:
    from domainbus.outbox.store import Batch, OutboxStore, RelayResult

__all__ = ["BatchDispatcher", "relay"]


class BatchDispatcher(Protocol):
    """What the relay dispatches with (a `Dispatcher` of either backend)."""

    def dispatch(self, event: object) -> int: ...
    def dispatch_batch(self, events: Iterable[object]) -> int: ...


def relay(
    store: OutboxStore,
    dispatcher: BatchDispatcher,
    *,
    batch_size: int = 1000,
    take_over: bool = False,
) -> RelayResult:
    """Claim, decode, dispatch and settle batches of up to `batch_size` rows until none is free.

    `take_over=True` also claims rows other outboxes still hold (at start-up, when no other
    process can be relaying). Returns the number of events delivered and the dead-lettered row
    ids; a handler's exception propagates after the store is settled (see the module doc).
    """
    from domainbus.outbox.store import RelayResult

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, not {batch_size!r}")
    if not callable(getattr(dispatcher, "dispatch_batch", None)):
        raise TypeError(
            f"dispatcher must have dispatch_batch(), not {type(dispatcher).__qualname__}"
        )
    if store.in_transaction:
        raise RuntimeError("relay() needs the outbox's connection without an open transaction")
    collect = getattr(dispatcher, "on_error", "raise") == "collect"
    delivered = 0
    dead_lettered: list[int] = []
    claim = functools.partial(store.claim, batch_size, take_over=take_over)
    (batch,) = _in_transaction(store, claim)
    while batch is not None:
        ids, events, dead = _decode(store, batch)
        if collect:
            dispatched, failures = _dispatch_each(dispatcher, events)
        else:
            dispatched, failures = _dispatch_all(dispatcher, events)
        if failures:
            dead_lettered += _settle_failures(store, batch, ids, dispatched, failures, dead)
            if len(failures) == 1:
                raise failures[0][1]
            raise BaseExceptionGroup(
                f"domainbus: {len(failures)} outbox event(s) failed", [exc for _, exc in failures]
            )
        # One transaction settles this batch (with the handlers' writes) and claims the next.
        settle = functools.partial(store.settle, batch, delivered=ids, dead=dead)
        moved, batch = _in_transaction(store, settle, claim)
        dead_lettered += moved
        delivered += len(ids)
    return RelayResult(delivered, tuple(dead_lettered))


Failures = list[tuple[int, BaseException]]
"""(index of the event being dispatched, or -1 if none, exception raised) pairs."""


def _decode(store: OutboxStore, batch: Batch) -> tuple[list[int], list[Any], list[tuple[int, str]]]:
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


def _dispatch_all(dispatcher: BatchDispatcher, events: list[Any]) -> tuple[int, Failures]:
    """One dispatch_batch call; returns (events dispatched, failures): stops at a failure."""
    iterator = iter(events)
    try:
        dispatcher.dispatch_batch(iterator)
    except BaseException as exc:
        # Both backends pull events one at a time, so what the list iterator has handed out
        # tells which event was being dispatched when the exception was raised.
        index = len(events) - operator.length_hint(iterator) - 1
        return max(index, 0), [(index, exc)]
    return len(events), []


def _dispatch_each(dispatcher: BatchDispatcher, events: list[Any]) -> tuple[int, Failures]:
    """Dispatch event by event ("collect" mode): every event runs, unless a BaseException."""
    failures: Failures = []
    dispatch = dispatcher.dispatch
    for index, event in enumerate(events):
        try:
            dispatch(event)
        except Exception as exc:
            failures.append((index, exc))
        except BaseException as exc:
            failures.append((index, exc))
            return index, failures
    return len(events), failures


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
    batch: Batch,
    ids: list[int],
    dispatched: int,
    failures: Failures,
    dead: list[tuple[int, str]],
) -> list[int]:
    """Settle a batch some of whose events failed, and note the outcome on each exception.

    Events before `dispatched` that did not fail are delivered; failing rows count an attempt
    (unless the exception is not an Exception, e.g. KeyboardInterrupt); the rest is released.
    """
    failing = {index for index, _ in failures}
    if store.in_transaction:  # the handlers wrote through the connection: undo the batch
        store.rollback()
        delivered: list[int] = []
        outcome = "the handlers' writes were rolled back and the whole batch stays in the outbox"
    else:
        delivered = [row for index, row in enumerate(ids[:dispatched]) if index not in failing]
        outcome = f"{len(delivered)} other event(s) of the batch were delivered"
    failed = [
        (ids[index], describe_error(exc))
        for index, exc in failures
        if index >= 0 and isinstance(exc, Exception)
    ]
    settle = functools.partial(store.settle, batch, delivered=delivered, failed=failed, dead=dead)
    moved: list[int] = _in_transaction(store, settle)[0]
    for index, exc in failures:
        if index >= 0:
            where = "moved to the dead-letter table" if ids[index] in moved else "stays pending"
            exc.add_note(f"domainbus: relaying outbox row {ids[index]}, which {where}; {outcome}")
    return moved

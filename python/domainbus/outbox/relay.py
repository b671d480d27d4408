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
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from domainbus.outbox.failures import settle_after_failure
from domainbus.transactions import describe_error

if TYPE_CHECKING:
    from domainbus.outbox.store import Batch, OutboxStore, RelayResult

__all__ = ["AsyncBatchDispatcher", "BatchDispatcher", "relay", "relay_async"]


class BatchDispatcher(Protocol):
    """What `relay` dispatches with (a `Dispatcher` of either backend)."""

    def dispatch(self, event: object) -> int: ...
    def dispatch_batch(self, events: Iterable[object]) -> int: ...


class AsyncBatchDispatcher(Protocol):
    """What `relay_async` dispatches with (a `Dispatcher` of either backend)."""

    def dispatch_async(
        self, event: object, *, concurrent: bool = False
    ) -> Coroutine[Any, Any, int]: ...
    def dispatch_batch_async(
        self, events: Iterable[object], *, concurrent: bool = False
    ) -> Coroutine[Any, Any, int]: ...


Failures = list[tuple[int, BaseException]]
"""(index of the event being dispatched, or -1 if none, exception raised) pairs."""


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
    _check_dispatcher(dispatcher, "dispatch_batch")
    run = _Relay(store, batch_size, take_over, _collects(dispatcher))
    while (events := run.next_events()) is not None:
        if run.collect:
            run.settle(*_dispatch_each(dispatcher, events))
        else:
            run.settle(*_dispatch_all(dispatcher, events))
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
    the handlers of one event together.
    """
    _check_dispatcher(dispatcher, "dispatch_batch_async")
    run = _Relay(store, batch_size, take_over, _collects(dispatcher))
    while (events := run.next_events()) is not None:
        if run.collect:
            run.settle(*await _dispatch_each_async(dispatcher, events, concurrent))
        else:
            run.settle(*await _dispatch_all_async(dispatcher, events, concurrent))
    return run.result()


def _check_dispatcher(dispatcher: object, method: str) -> None:
    if not callable(getattr(dispatcher, method, None)):
        raise TypeError(f"dispatcher must have {method}(), not {type(dispatcher).__qualname__}")


def _collects(dispatcher: object) -> bool:
    """Whether the dispatcher's policy is "collect" (then events are dispatched one by one)."""
    return bool(getattr(dispatcher, "on_error", "raise") == "collect")


class _Relay:
    """The relay's bookkeeping, whatever dispatches: claim, decode, settle, count."""

    def __init__(self, store: OutboxStore, batch_size: int, take_over: bool, collect: bool) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, not {batch_size!r}")
        if store.in_transaction:
            raise RuntimeError("relay needs the outbox's connection without an open transaction")
        self.store = store
        self.collect = collect
        self.claim = functools.partial(store.claim, batch_size, take_over=take_over)
        self.delivered = 0
        self.dead_lettered: list[int] = []
        self.batch: Batch | None = _in_transaction(store, self.claim)[0]
        self.ids: list[int] = []
        self.dead: list[tuple[int, str]] = []

    def next_events(self) -> list[Any] | None:
        """The decoded events of the claimed batch (bad rows set aside), or None when done."""
        if self.batch is None:
            return None
        self.ids, events, self.dead = _decode(self.store, self.batch)
        return events

    def settle(self, dispatched: int, failures: Failures) -> None:
        """Settle the batch after its dispatch; raise the failures, if any, once settled."""
        store, batch = self.store, self.batch
        assert batch is not None
        if failures:
            self.dead_lettered += _settle_failures(
                store, batch, self.ids, dispatched, failures, self.dead
            )
            if len(failures) == 1:
                raise failures[0][1]
            raise BaseExceptionGroup(
                f"domainbus: {len(failures)} outbox event(s) failed", [exc for _, exc in failures]
            )
        # One transaction settles this batch (with the handlers' writes) and claims the next.
        settle = functools.partial(store.settle, batch, delivered=self.ids, dead=self.dead)
        moved, self.batch = _in_transaction(store, settle, self.claim)
        self.dead_lettered += moved
        self.delivered += len(self.ids)

    def result(self) -> RelayResult:
        from domainbus.outbox.store import RelayResult

        return RelayResult(self.delivered, tuple(self.dead_lettered))


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


async def _dispatch_all_async(
    dispatcher: AsyncBatchDispatcher, events: list[Any], concurrent: bool
) -> tuple[int, Failures]:
    """`_dispatch_all` with one dispatch_batch_async call."""
    iterator = iter(events)
    try:
        await dispatcher.dispatch_batch_async(iterator, concurrent=concurrent)
    except BaseException as exc:
        index = len(events) - operator.length_hint(iterator) - 1
        return max(index, 0), [(index, exc)]
    return len(events), []


async def _dispatch_each_async(
    dispatcher: AsyncBatchDispatcher, events: list[Any], concurrent: bool
) -> tuple[int, Failures]:
    """`_dispatch_each` with dispatch_async."""
    failures: Failures = []
    for index, event in enumerate(events):
        try:
            await dispatcher.dispatch_async(event, concurrent=concurrent)
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
    """Settle a batch some of whose events failed (`domainbus.outbox.failures` says how), and
    note the outcome on each exception."""
    settled = settle_after_failure(store, batch, ids, dispatched, failures, dead=dead)
    if settled.rolled_back:
        outcome = "the handlers' writes were rolled back and the whole batch stays in the outbox"
    else:
        outcome = f"{len(settled.delivered)} other event(s) of the batch were delivered"
    moved = settled.dead_lettered
    for index, exc in failures:
        if index >= 0:
            where = "moved to the dead-letter table" if ids[index] in moved else "stays pending"
            exc.add_note(f"domainbus: relaying outbox row {ids[index]}, which {where}; {outcome}")
    return moved

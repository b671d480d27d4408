"""What becomes of a claimed batch when a handler raises: the one policy of the unit of work and
the relay.

- If the handlers wrote through the store's connection (the store's
  `discard_handler_writes` says so), those writes are rolled back and the whole batch goes
  back to the outbox: the handlers' writes and the delivery records stay consistent.
- Otherwise the events dispatched before the failure (and not failing themselves) are settled
  as delivered.
- Each failing row counts one attempt, unless its exception is not an `Exception`
  (KeyboardInterrupt, a cancellation): a row reaching `max_attempts` goes to the dead-letter
  table. The rest of the batch is released for `relay()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from domainbus.transactions import describe_error

if TYPE_CHECKING:
    from domainbus.outbox.store import OutboxBatch, OutboxStore

__all__ = ["Settled", "settle_after_failure"]


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome: rows delivered, rows dead-lettered, and whether the handlers' writes were
    rolled back (then nothing of the batch counts as delivered)."""

    delivered: list[int]
    dead_lettered: list[int]
    rolled_back: bool


def settle_after_failure(
    store: OutboxStore,
    batch: OutboxBatch,
    ids: Sequence[int],
    dispatched: int,
    failures: Sequence[tuple[int, BaseException]],
    *,
    dead: Sequence[tuple[int, str]] = (),
    follow_ups: Sequence[bytes] = (),
) -> Settled:
    """Settle `batch` after `failures` ((index in `ids`, or -1, exception) pairs), in one
    transaction; `follow_ups` (events the handlers recorded before the failure) are stored
    free in it too, unless the handlers' writes are rolled back. Raises if the store fails."""
    failing = {index for index, _ in failures}
    failed = [
        (ids[index], describe_error(exc))
        for index, exc in failures
        if index >= 0 and isinstance(exc, Exception)
    ]
    try:
        rolled_back = store.discard_handler_writes(batch)
        if rolled_back:
            delivered: list[int] = []
            follow_ups = ()
        else:
            delivered = [row for index, row in enumerate(ids[:dispatched]) if index not in failing]
        if not store.in_transaction:  # still open: a claim that holds row locks
            store.begin()
        moved = store.settle(batch, delivered=delivered, failed=failed, dead=dead)
        if follow_ups:
            store.append(follow_ups, claimed=False)
        store.commit()
    except BaseException:
        store.rollback()
        raise
    return Settled(delivered, moved, rolled_back)

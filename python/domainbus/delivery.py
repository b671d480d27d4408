"""Reading the delivery contract (rule 12): what a `dispatch_batch` call delivered, from how it
ended. Used by `outbox.relay` and `domainbus run`; never inferred from how far the target
iterated the batch (a wrapper or a broker publisher may take it all with `list()` first).
"""

from __future__ import annotations

__all__ = ["batch_index", "failed_indexes"]


def batch_index(exc: BaseException, size: int) -> int | None:
    """`exc.batch_index` when it is an int naming an event of a batch of `size`, else None."""
    index = getattr(exc, "batch_index", None)
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < size:
        return index
    return None


def failed_indexes(exc: BaseException, size: int) -> list[int] | None:
    """The batch indexes of the members of an ExceptionGroup ("collect": every event was
    attempted), one per member in order; None unless every member names an event of the
    batch, each member being its own exception object (one object raised for two events
    carries only the last one's index)."""
    if not isinstance(exc, BaseExceptionGroup) or batch_index(exc, size) is not None:
        return None
    members = exc.exceptions
    if not members or len({id(member) for member in members}) != len(members):
        return None
    indexes = [batch_index(member, size) for member in members]
    return None if None in indexes else [i for i in indexes if i is not None]

"""The hooks that carry trace context through the outbox and Redis, without importing OpenTelemetry.

`domainbus.observe` fills them in when tracing is on; while they are None (the default) the
stores and brokers do nothing more than before. This module imports nothing, so the lower
layers (outbox, uow, redis) can use it.

- `capture`: returns the W3C `traceparent` of the current context (or None). The unit of work
  stores it with the rows it appends; the Redis publisher with the frames it writes.
- `incoming`: a context variable holding the traceparents (one per event, None where none was
  stored) of the batch being dispatched, set by the relay and the Redis worker around their
  `dispatch_batch` call; the instrumentation reads it to parent or link its span.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar

__all__ = ["capture", "current_traceparent", "incoming"]

capture: Callable[[], str | None] | None = None

incoming: ContextVar[Sequence[str | None] | None] = ContextVar("domainbus_incoming", default=None)


def current_traceparent() -> str | None:
    """The traceparent to store with what is recorded now; None when tracing is off."""
    hook = capture
    return None if hook is None else hook()

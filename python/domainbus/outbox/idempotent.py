"""`idempotent(handler, store)`: a handler that runs at most once per event.

At-least-once delivery means a handler may see an event again (after a crash, or when a lease
ran out). The wrapper records each event id it handled under the handler's key, in the same
transaction as the handler runs in, and skips events already recorded. What the handler writes
through the store's connection commits together with that record, so those writes happen
exactly once; effects outside the database (an e-mail sent) happen at least once and at most
once per successful commit.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from typing import Any

from domainbus.outbox.store import IdempotencyStore

__all__ = ["idempotent"]


def idempotent(
    handler: Callable[[Any], object], store: IdempotencyStore, *, key: str | None = None
) -> Callable[[Any], None]:
    """Wrap `handler` so it runs once per `event.event_id`; register the wrapper instead.

    `key` names the handler in the store (default: its module-qualified name; lambdas need
    one). Keep it stable across releases, or the handler runs again for events it already
    handled; give two handlers that share a name (two bound methods of one class) their own.
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__qualname__}")
    if inspect.iscoroutinefunction(handler):
        raise TypeError("idempotent() wraps synchronous handlers; this one is async")
    if not callable(getattr(store, "run_once", None)):
        raise TypeError(
            f"store must have run_once() (e.g. a SqliteOutbox), not {type(store).__qualname__}"
        )
    if key is None:
        key = _handler_key(handler)
    elif not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty str, not {key!r}")
    run_once = store.run_once
    handler_key = key

    @functools.wraps(handler)
    def run_idempotently(event: Any) -> None:
        event_id = getattr(event, "event_id", None)
        if not isinstance(event_id, uuid.UUID):
            raise TypeError(
                f"idempotent handler {handler_key} needs events with a uuid.UUID event_id "
                f"(a DomainEvent), not {type(event).__qualname__}"
            )
        run_once(handler_key, event_id, functools.partial(handler, event))

    return run_idempotently


def _handler_key(handler: Callable[..., object]) -> str:
    name = getattr(handler, "__qualname__", None)
    module = getattr(handler, "__module__", None)
    if not isinstance(name, str) or "<lambda>" in name:
        raise ValueError(f"cannot derive a stable key for {handler!r}: pass key= to idempotent()")
    return f"{module}.{name}" if isinstance(module, str) else name

"""domainbus: domain events with a Rust hot path and a pure-Python reference twin.

`Dispatcher` and `BatchQueue` are the `domainbus.rust` classes when the extension imports,
else the `domainbus.pure` ones; set `DOMAINBUS_BACKEND=pure` (or `rust`) to choose.
`BACKEND` says which one is in use.
"""

from __future__ import annotations

import os
from typing import Literal

from domainbus import pure as pure
from domainbus.aggregate import AggregateRoot
from domainbus.errors import (
    ConcurrencyError,
    DecodeError,
    DomainbusError,
    QueueClosed,
    UnknownCommand,
)
from domainbus.events import DomainEvent
from domainbus.outbox import idempotent
from domainbus.uow import AsyncUnitOfWork, UnitOfWork

__all__ = [
    "BACKEND",
    "AggregateRoot",
    "AsyncUnitOfWork",
    "BatchQueue",
    "ConcurrencyError",
    "DecodeError",
    "Dispatcher",
    "DomainEvent",
    "DomainbusError",
    "QueueClosed",
    "UnitOfWork",
    "UnknownCommand",
    "__version__",
    "idempotent",
]

__version__ = "0.1.0"


def _choose_backend() -> Literal["rust", "pure"]:
    wanted = os.environ.get("DOMAINBUS_BACKEND", "").strip().lower()
    if wanted not in ("", "rust", "pure"):
        raise ImportError(f"DOMAINBUS_BACKEND must be 'rust' or 'pure', not {wanted!r}")
    if wanted == "pure":
        return "pure"
    try:
        import domainbus.rust  # noqa: F401
    except ImportError:
        if wanted == "rust":
            raise
        return "pure"
    return "rust"


BACKEND: Literal["rust", "pure"] = _choose_backend()

if BACKEND == "rust":
    from domainbus.rust import BatchQueue, Dispatcher
else:
    from domainbus.pure import BatchQueue, Dispatcher  # type: ignore[assignment]

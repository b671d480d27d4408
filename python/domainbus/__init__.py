"""domainbus: domain events with a Rust hot path and a pure-Python reference twin.

`Dispatcher` and `BatchQueue` are the `domainbus.rust` classes when the extension imports,
else the `domainbus.pure` ones; `BACKEND` says which one is in use. The environment variable
`DOMAINBUS_BACKEND` chooses: "rust" (the extension, or a `BackendError` if it does not import),
"pure", or unset/empty (the extension when it imports, else pure). Any other value is a
`BackendError` (an ImportError) naming the valid ones, raised where the backend is first used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from domainbus import pure as pure
from domainbus.aggregate import AggregateRoot
from domainbus.errors import (
    BackendError,
    ConcurrencyError,
    DecodeError,
    DomainbusError,
    QueueClosed,
)
from domainbus.events import DomainEvent
from domainbus.outbox import idempotent
from domainbus.uow import AsyncUnitOfWork, UnitOfWork

__all__ = [
    "BACKEND",
    "AggregateRoot",
    "AsyncUnitOfWork",
    "BackendError",
    "BatchQueue",
    "ConcurrencyError",
    "DecodeError",
    "Dispatcher",
    "DomainEvent",
    "DomainbusError",
    "QueueClosed",
    "UnitOfWork",
    "__version__",
    "idempotent",
]

__version__ = "0.1.0"


_BACKENDS = ("rust", "pure")


def _choose_backend() -> Literal["rust", "pure"]:
    raw = os.environ.get("DOMAINBUS_BACKEND", "")
    wanted = raw.strip().lower()
    if wanted not in ("", *_BACKENDS):
        raise BackendError(
            f"DOMAINBUS_BACKEND must be 'rust', 'pure' or unset (empty), not {raw!r}"
        )
    if wanted == "pure":
        return "pure"
    try:
        import domainbus.rust  # noqa: F401
    except ImportError as exc:
        if wanted == "rust":
            raise BackendError(
                f"DOMAINBUS_BACKEND=rust, but the Rust extension does not import ({exc}); "
                "build it (pip install .) or unset DOMAINBUS_BACKEND to use the pure backend"
            ) from exc
        return "pure"
    return "rust"


backend_error: BackendError | None = None
"""Why `DOMAINBUS_BACKEND` named no usable backend (then `Dispatcher` & co. raise it)."""

try:
    BACKEND: Literal["rust", "pure"] = _choose_backend()
except BackendError as _error:
    backend_error = _error
    if not TYPE_CHECKING:

        def __getattr__(name: str) -> object:
            if name in ("BACKEND", "BatchQueue", "Dispatcher"):
                raise backend_error
            raise AttributeError(f"module 'domainbus' has no attribute {name!r}")

else:
    if BACKEND == "rust":
        from domainbus.rust import BatchQueue, Dispatcher
    else:
        from domainbus.pure import BatchQueue, Dispatcher  # type: ignore[assignment]

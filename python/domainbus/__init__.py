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

from domainbus.errors import (
    BackendError,
    ConcurrencyError,
    DecodeError,
    DomainbusError,
    QueueClosed,
    UnknownCommand,
)
from domainbus.events import DomainEvent

if TYPE_CHECKING:
    __version__: str
    from domainbus import pure as pure
    from domainbus.aggregate import AggregateRoot
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
    "UnknownCommand",
    "__version__",
    "idempotent",
]


def _read_version() -> str:
    """The version, written once in Cargo.toml (maturin copies it into the package metadata:
    `dynamic = ["version"]` in pyproject.toml). A source checkout reads Cargo.toml itself; an
    installed package reads its metadata. Loaded on first use of `__version__` (PEP 562)."""
    from pathlib import Path

    cargo = Path(__file__).resolve().parents[2] / "Cargo.toml"
    if cargo.is_file():
        import tomllib

        try:
            with cargo.open("rb") as file:
                version = tomllib.load(file)["package"]["version"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        else:
            if isinstance(version, str):
                return version
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("domainbus")
    except PackageNotFoundError:
        return "0+unknown"


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

# Imported when first used (PEP 562), so `import domainbus` stays cheap: the unit of work and
# the outbox bring sqlite3 and the codec, which a program that only dispatches never needs.
_LAZY = {
    "AggregateRoot": "domainbus.aggregate",
    "AsyncUnitOfWork": "domainbus.uow",
    "UnitOfWork": "domainbus.uow",
    "idempotent": "domainbus.outbox",
}


def __getattr__(name: str) -> object:
    if name == "__version__":
        value = globals()["__version__"] = _read_version()
        return value
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "pure":
        import importlib

        return importlib.import_module("domainbus.pure")
    if backend_error is not None and name in ("BACKEND", "BatchQueue", "Dispatcher"):
        raise backend_error
    raise AttributeError(f"module 'domainbus' has no attribute {name!r}")


try:
    BACKEND: Literal["rust", "pure"] = _choose_backend()
except BackendError as _error:
    backend_error = _error
else:
    if BACKEND == "rust":
        from domainbus.rust import BatchQueue, Dispatcher
    else:
        from domainbus.pure import BatchQueue, Dispatcher  # type: ignore[assignment]

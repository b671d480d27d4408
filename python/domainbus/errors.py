"""Exceptions of domainbus, shared by both backends (the Rust extension raises these too)."""

from __future__ import annotations

__all__ = ["DomainbusError", "QueueClosed"]


class DomainbusError(Exception):
    """Base class of the errors domainbus raises itself (handler errors propagate unchanged)."""


class QueueClosed(DomainbusError):
    """`put` on a `BatchQueue` that was stopped: the event was not accepted."""

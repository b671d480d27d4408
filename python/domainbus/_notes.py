"""The texts domainbus adds to handler exceptions (PEP 678 notes), shared by every dispatch path.

The Rust extension builds the same strings (rust/errors.rs); the parity tests compare them.
"""

from __future__ import annotations

__all__ = ["describe_handler", "failure_note", "set_batch_index"]


def describe_handler(handler: object) -> str:
    """`module.qualname` of a handler, or its repr when it has no qualified name."""
    name = _attribute(handler, "__qualname__")
    if not isinstance(name, str):
        return repr(handler)
    module = _attribute(handler, "__module__")
    return f"{module}.{name}" if isinstance(module, str) else name


def _attribute(handler: object, name: str) -> object:
    """`getattr(handler, name)`, or None when it cannot be read (whatever `__getattr__` raises):
    describing a handler never replaces the error being described."""
    try:
        return getattr(handler, name)
    except Exception:
        return None


def failure_note(handler: object, event_type: type, index: int | None) -> str:
    note = f"domainbus: raised by handler {describe_handler(handler)} for {event_type.__qualname__}"
    return note if index is None else f"{note} at batch index {index}"


def set_batch_index(exc: BaseException, index: int) -> None:
    """Record on `exc` which event of a batch it escaped from (`exc.batch_index`, rule 8).

    An exception type without a `__dict__` (`__slots__` only) cannot take the attribute; it is
    left as is, and a relay then treats the whole batch as not delivered (rule 12).
    """
    try:
        exc.batch_index = index  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass

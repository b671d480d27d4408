"""Methods marked by a decorator (`applies`, `handles`), collected along a class's MRO."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["marked_methods"]


def marked_methods(cls: type, mark: str) -> list[tuple[str, type, Callable[..., Any]]]:
    """(name, event type, function) of the methods carrying `mark`, base classes first and in
    definition order; a method overridden in a subclass replaces the base's (decorated or
    not) and takes the subclass's place."""
    by_name: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if callable(value) and hasattr(value, mark):
                by_name.pop(name, None)
                by_name[name] = value
            elif name in by_name:
                del by_name[name]
    return [(name, t, fn) for name, fn in by_name.items() for t in getattr(fn, mark)]

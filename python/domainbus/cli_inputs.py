"""What the `domainbus` commands' arguments name, turned into objects: MODULE:NAME targets, the
user's dispatcher and codec, input files; and `UsageError`, how a bad argument is reported
(one line, exit status 2).

Below `domainbus.cli` and the subcommand modules (`domainbus.redis.cli`,
`domainbus.eventstore.cli`), which all use it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from domainbus.codec import FORMATS, EventCodec
from domainbus.events import DomainEvent

__all__ = [
    "DEMO_CODEC_HINT",
    "UsageError",
    "check_input",
    "import_target",
    "load_codec",
    "load_dispatcher",
    "rate",
]

DEMO_CODEC_HINT = "a file written by `domainbus generate` needs --codec domainbus.demo:codec"


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


def import_target(spec: str) -> tuple[Any, Any]:
    """`(module, object)` named by "package.module:attr.path"."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"expected MODULE:NAME (like myapp.events:dispatcher), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc!r}") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return module, target


def load_dispatcher(spec: str) -> tuple[Any, Any]:
    """The user's dispatcher: an object with `dispatch_batch`, or a function returning one."""
    module, target = import_target(spec)
    if isinstance(target, type):
        raise UsageError(
            f"{spec} is a class, not a dispatcher: name an instance (myapp.events:dispatcher) "
            "or a function that returns one"
        )
    if not hasattr(target, "dispatch_batch") and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise UsageError(f"{spec}() raised {exc!r}") from exc
    if not callable(getattr(target, "dispatch_batch", None)):
        raise UsageError(f"{spec} is not a dispatcher (it has no dispatch_batch method)")
    return module, target


def _all_event_types() -> list[type[DomainEvent]]:
    found: list[type[DomainEvent]] = []
    todo = list(DomainEvent.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def load_codec(spec: str | None, module: Any, *, hint: str | None = DEMO_CODEC_HINT) -> EventCodec:
    """`--codec MODULE:NAME`; else `module`'s `codec`; else every loaded event. `hint` is added
    to the error when no event class is loaded."""
    if spec is not None:
        codec = import_target(spec)[1]
        if not isinstance(codec, EventCodec):
            raise UsageError(f"{spec} is not an EventCodec")
        return codec
    codec = getattr(module, "codec", None)
    if isinstance(codec, EventCodec):
        return codec
    types = _all_event_types()
    if not types:
        suffix = f" ({hint})" if hint else ""
        raise UsageError(f"no DomainEvent subclasses are loaded: pass --codec MODULE:CODEC{suffix}")
    try:
        return EventCodec(*types)
    except ValueError as exc:
        raise UsageError(f"{exc}; pass --codec MODULE:CODEC") from None


def check_input(path: str, format: str | None) -> None:
    """A readable event file and a known format, or UsageError."""
    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a directory, not an event file")
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path!r}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {path!r}: permission denied")


def rate(count: int, seconds: float) -> str:
    """ "12,345 events/s", for the summaries."""
    return f"{count / seconds:,.0f} events/s" if seconds > 0 else "n/a events/s"

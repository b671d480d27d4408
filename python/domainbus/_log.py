"""The loggers of domainbus and the one way it logs a failure it handles for the user.

Logger names (one hierarchy under `domainbus`; configure `logging.getLogger("domainbus")` to
see them all):

    domainbus.outbox      the relay: a failing row, a dead letter, serve() retrying
    domainbus.uow         a unit of work whose dispatch failed after its commit
    domainbus.redis       the Redis worker: retries, dead letters, reconnects
    domainbus.eventstore  a projection runner whose page failed

Every failure record carries the traceback (`exc_info`) and, as `extra` attributes a formatter
or a structured handler can read, `domainbus_handler` (`module.qualname`, from the note the
dispatcher put on the exception; None when no handler raised), `domainbus_event_type` and
`domainbus_event_id` (None when not known). The library never prints.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["failure_extra", "handler_of", "log_failure"]

_PREFIX = "domainbus: raised by handler "


def handler_of(exc: BaseException) -> str | None:
    """The handler named by the dispatcher's note on `exc` (`module.qualname`), if any."""
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_PREFIX):
            return note[len(_PREFIX) :].split(" for ", 1)[0]
    return None


def failure_extra(exc: BaseException, event: object = None) -> dict[str, Any]:
    """The `extra` fields of a failure record (the module doc)."""
    return {
        "domainbus_handler": handler_of(exc),
        "domainbus_event_type": None if event is None else type(event).__qualname__,
        "domainbus_event_id": None if event is None else str(getattr(event, "event_id", None)),
    }


def log_failure(
    logger: logging.Logger,
    level: int,
    message: str,
    exc: BaseException,
    event: object = None,
    *args: object,
) -> None:
    """Log `message % args`, followed by the handler, event type and id, with the traceback."""
    if not logger.isEnabledFor(level):
        return
    extra = failure_extra(exc, event)
    where = (
        f" [handler {extra['domainbus_handler'] or '-'}, event "
        f"{extra['domainbus_event_type'] or '-'} {extra['domainbus_event_id'] or '-'}]"
    ).replace("%", "%%")
    logger.log(level, message + where, *args, exc_info=exc, extra=extra)

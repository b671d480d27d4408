"""Wire the service: one dispatcher, the dependencies provided once, the handlers registered."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import domainbus
from allocation import adapters, service

logger = logging.getLogger("allocation")


def log_commands(command: object, call_next: Any, log: logging.Logger) -> Any:
    """Middleware: one line per command, and its failure."""
    log.info("executing %r", command)
    try:
        return call_next(command)
    except Exception:
        log.exception("command %r failed", command)
        raise


def bootstrap(
    connection: sqlite3.Connection,
    notifications: adapters.Notifications | None = None,
    *,
    dispatcher_class: Any = None,
    log: logging.Logger = logger,
) -> Any:
    """The dispatcher of the service, ready for `execute(command)`.

    `dispatcher_class`: `domainbus.Dispatcher` by default (tests pass each backend's).
    """
    adapters.create_schema(connection)
    bus = (dispatcher_class or domainbus.Dispatcher)(nested="queue")
    bus.provide(
        notifications or adapters.InMemoryNotifications(),  # by type: Notifications
        uow=lambda: service.ProductsUnitOfWork(bus, connection),
        bus=bus,
        log=log,
    )
    bus.add_middleware(log_commands)
    for command_type, handler in service.COMMAND_HANDLERS.items():
        bus.register_command_handler(command_type, handler)
    for event_type, handlers in service.EVENT_HANDLERS.items():
        for handler in handlers:
            bus.register_handler(event_type, handler)
    return bus

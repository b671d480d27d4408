"""Usage examples type-checked by tests/test_typing.py (in the manner of msgspec's tests/typing).

Each call of `reveal_type` is followed by `# R: <the type mypy must reveal>`; the test runs mypy
(strict) over this file and compares. It is never imported or run.
"""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from typing import Any, reveal_type

import domainbus
from domainbus import pure, rust
from domainbus._core import HandlerDecorator


class Placed(domainbus.DomainEvent):
    order_id: int


class Allocate:
    pass


def on_placed(event: Placed) -> None: ...


def allocate(command: Allocate) -> str:
    return "ref"


def on_error(exc: Exception, event: Any, handler: Any) -> None: ...


d = rust.Dispatcher()
p = pure.Dispatcher(on_error=on_error, nested="queue")

reveal_type(d.handler(Placed))  # R: domainbus._core.HandlerDecorator
decorator: HandlerDecorator = d.handler(Placed, priority=1, once=True)


@d.handler(Placed, priority=5)
def on_placed_first(event: Placed) -> int:
    return 1


reveal_type(on_placed_first)  # R: def (event: examples.Placed) -> int


@p.handler(Placed, weak=True)
def on_placed_pure(event: Placed) -> None: ...


reveal_type(on_placed_pure)  # R: def (event: examples.Placed)
reveal_type(d.register_handler(Placed, on_placed))  # R: def (event: examples.Placed)
reveal_type(p.register_handler(Placed, on_placed))  # R: def (event: examples.Placed)
reveal_type(d.dispatch(Placed(order_id=1)))  # R: int
reveal_type(p.dispatch(Placed(order_id=1)))  # R: int
reveal_type(d.dispatch_batch([Placed(order_id=1)]))  # R: int
reveal_type(p.dispatch_batch(iter([Placed(order_id=1)])))  # R: int
coroutine: Coroutine[Any, Any, int] = d.dispatch_async(Placed(order_id=1))


async def awaiting() -> None:
    reveal_type(await p.dispatch_batch_async([], concurrent=True))  # R: int
    reveal_type(await d.execute_async(Allocate()))  # R: Any


reveal_type(d.handlers_for(Placed))  # R: tuple[def (*Any, **Any) -> Any, ...]
reveal_type(d.unregister_handler(Placed, on_placed))  # R: bool
registered = d.register_command_handler(Allocate, allocate)
reveal_type(registered)  # R: def (command: examples.Allocate) -> str
reveal_type(p.command_handler(Allocate)(allocate))  # R: def (command: examples.Allocate) -> str
reveal_type(d.execute(Allocate()))  # R: Any
reveal_type(d.on_unhandled)  # R: (def (Any) -> object) | None

queue = rust.BatchQueue(d, capacity=1_024)
reveal_type(queue.drain())  # R: int
reveal_type(queue.put_many([Placed(order_id=2)]))  # R: int
reveal_type(pure.BatchQueue(p).drain(max_events=10))  # R: int

reveal_type(domainbus.Dispatcher().handler(Placed))  # R: domainbus._core.HandlerDecorator
reveal_type(Placed(order_id=3).event_id)  # R: uuid.UUID
reveal_type(domainbus.__version__)  # R: str
ident: uuid.UUID = Placed(order_id=4).event_id

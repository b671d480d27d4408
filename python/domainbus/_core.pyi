"""Type stubs of the Rust extension `domainbus._core` (see `domainbus.pure` for the contract)."""

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal, TypeVar

H = TypeVar("H", bound=Callable[..., Any])
ErrorCallback = Callable[[Exception, Any, Callable[..., Any]], object]

__version__: str

def new_event_id() -> uuid.UUID: ...
def utc_now() -> datetime: ...
def _after_fork() -> None: ...

class HandlerDecorator:
    def __call__(self, handler: H) -> H: ...

class Dispatcher:
    def __init__(
        self,
        *,
        on_error: Literal["raise", "collect"] | ErrorCallback = "raise",
        on_unhandled: Callable[[Any], object] | None = None,
        nested: Literal["immediate", "queue"] = "immediate",
    ) -> None: ...
    @property
    def on_error(self) -> Literal["raise", "collect"] | ErrorCallback: ...
    @property
    def on_unhandled(self) -> Callable[[Any], object] | None: ...
    @property
    def nested(self) -> str: ...
    def register_handler(
        self,
        event_type: type,
        handler: H,
        *,
        priority: int = 0,
        once: bool = False,
        weak: bool = False,
    ) -> H: ...
    def handler(
        self, event_type: type, *, priority: int = 0, once: bool = False, weak: bool = False
    ) -> Callable[[H], H]: ...
    def unregister_handler(self, event_type: type, handler: Callable[..., Any]) -> bool: ...
    def handlers_for(self, event_type: type) -> tuple[Callable[..., Any], ...]: ...
    def clear(self) -> None: ...
    def dispatch(self, event: object) -> int: ...
    def dispatch_batch(self, events: Iterable[object]) -> int: ...

"""The built-in demo schema: user registration events (the article's) plus a small shop.

Used by `domainbus generate` (synthetic logs), `domainbus demo` (the article's three handlers)
and the replay benchmark (`noop_dispatcher`: three no-op handlers per type). Generated logs
are deterministic for a given seed, apart from event ids and timestamps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from domainbus.codec import EventCodec
from domainbus.events import DomainEvent

__all__ = [
    "EVENT_TYPES",
    "OrderPlaced",
    "OrderShipped",
    "PaymentReceived",
    "UserDeactivated",
    "UserEmailChanged",
    "UserRegistered",
    "article_dispatcher",
    "codec",
    "generate_events",
    "noop_dispatcher",
]

# The ignores: mypy reports a metaclass conflict and a frozen-dataclass error on every
# DomainEvent subclass because of domainbus.events._EventMeta; the classes are fine at runtime.


class UserRegistered(DomainEvent):
    """A user signed up (the article's event)."""

    user_id: str
    username: str
    email: str


class UserEmailChanged(DomainEvent):
    user_id: str
    new_email: str


class UserDeactivated(DomainEvent):
    user_id: str
    reason: str = "requested"


class OrderPlaced(DomainEvent):
    order_id: str
    user_id: str
    total_cents: int
    currency: str = "EUR"


class PaymentReceived(DomainEvent):
    order_id: str
    amount_cents: int


class OrderShipped(DomainEvent):
    order_id: str
    carrier: str


EVENT_TYPES: tuple[type[DomainEvent], ...] = (
    UserRegistered,
    UserEmailChanged,
    UserDeactivated,
    OrderPlaced,
    PaymentReceived,
    OrderShipped,
)

codec = EventCodec(*EVENT_TYPES)

_CARRIERS = ("DHL", "UPS", "La Poste", "PostNL")


def _make(kind: type[DomainEvent], n: int, rng: random.Random) -> DomainEvent:
    user, order = f"u-{n % 50_000}", f"o-{n}"
    if kind is UserRegistered:
        return UserRegistered(user_id=user, username=f"user{n}", email=f"user{n}@example.com")
    if kind is UserEmailChanged:
        return UserEmailChanged(user_id=user, new_email=f"new{n}@example.org")
    if kind is UserDeactivated:
        return UserDeactivated(user_id=user)
    if kind is OrderPlaced:
        return OrderPlaced(order_id=order, user_id=user, total_cents=rng.randrange(100, 50_000))
    if kind is PaymentReceived:
        return PaymentReceived(order_id=order, amount_cents=rng.randrange(100, 50_000))
    return OrderShipped(order_id=order, carrier=_CARRIERS[n % len(_CARRIERS)])


def generate_events(
    count: int, types: int = len(EVENT_TYPES), seed: int = 0
) -> Iterator[DomainEvent]:
    """`count` synthetic events drawn from the first `types` demo event types."""
    if not 1 <= types <= len(EVENT_TYPES):
        raise ValueError(f"types must be from 1 to {len(EVENT_TYPES)}, not {types}")
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    rng = random.Random(seed)
    kinds = EVENT_TYPES[:types]
    for n in range(count):
        yield _make(kinds[rng.randrange(types)], n, rng)


def _noop_1(event: object) -> None:
    pass


def _noop_2(event: object) -> None:
    pass


def _noop_3(event: object) -> None:
    pass


NOOP_HANDLERS: tuple[Callable[[object], None], ...] = (_noop_1, _noop_2, _noop_3)


def noop_dispatcher(dispatcher_class: Callable[[], Any] | None = None) -> Any:
    """A dispatcher (default: `domainbus.Dispatcher`) with three no-op handlers per demo type.

    `domainbus run domainbus.demo:noop_dispatcher FILE` replays a generated log through it.
    """
    if dispatcher_class is None:
        from domainbus import Dispatcher

        dispatcher_class = Dispatcher
    dispatcher = dispatcher_class()
    for event_type in EVENT_TYPES:
        for handler in NOOP_HANDLERS:
            dispatcher.register_handler(event_type, handler)
    return dispatcher


def article_dispatcher(out: Callable[[str], object] = print) -> Any:
    """A dispatcher with the article's three UserRegistered handlers, reporting through `out`."""
    from domainbus import Dispatcher

    dispatcher = Dispatcher()

    @dispatcher.handler(UserRegistered)
    def send_welcome_email(event: UserRegistered) -> None:
        out(f"  send_welcome_email: welcome mail to {event.email}")

    @dispatcher.handler(UserRegistered)
    def log_user_activity(event: UserRegistered) -> None:
        out(f"  log_user_activity: registration of {event.username} ({event.user_id})")

    @dispatcher.handler(UserRegistered)
    def update_user_statistics(event: UserRegistered) -> None:
        out(f"  update_user_statistics: one more user ({event.username})")

    return dispatcher

"""The systems `domainbus bench` compares, each wired the way its users would wire it.

A system turns a `Wiring` (handlers registered on classes) into a `Bus` (how to publish one
event, a batch, a batch asynchronously) inside a context manager that undoes any global state
it touched. Systems whose library is not installed report why (`System.missing`); systems that
cannot express a workload (exact-type routing under a class hierarchy, no async API, no queue)
are skipped by the workload with a reason, never run with a silently different meaning.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from domainbus.bench.handlers import Handler

__all__ = ["SYSTEMS", "Bus", "EventDispatcher", "NotApplicable", "System", "Wiring", "by_name"]

Routing = Literal["mro", "exact", "none"]


class NotApplicable(Exception):
    """A system cannot express this wiring; the message says why."""


@dataclass(frozen=True)
class Wiring:
    """What a workload registers: `(event class, handler)` pairs in registration order, and
    the concrete classes of the events it will publish."""

    routes: tuple[tuple[type, Handler], ...]
    event_types: tuple[type, ...]

    def handlers(self) -> list[Handler]:
        """The distinct handlers, in first-registration order."""
        return list(dict.fromkeys(handler for _, handler in self.routes))


@dataclass(frozen=True)
class Bus:
    """A system wired up and ready: the calls a workload driver makes."""

    publish: Callable[[Any], object]
    publish_many: Callable[[Sequence[Any]], object]
    publish_many_async: Callable[[Sequence[Any]], Awaitable[object]] | None = None
    dispatcher: Any = None  # the domainbus Dispatcher behind the bus, if any
    backend: ModuleType | None = None  # its backend module (domainbus.rust or domainbus.pure)


@dataclass(frozen=True)
class System:
    """One contender: a name, the module it needs, how it routes, and how to wire it."""

    name: str
    summary: str
    connect: Callable[[Wiring], contextlib.AbstractContextManager[Bus]] = field(repr=False)
    routing: Routing
    requires: str | None = None  # module that must import; None: always available
    install: str = ""  # how to get `requires`, for the message when it does not import

    def missing(self) -> str | None:
        """Why this system cannot run here (its library does not import), or None."""
        if self.requires is None:
            return None
        try:
            importlib.import_module(self.requires)
        except ImportError:
            return f"not installed ({self.install})" if self.install else "does not import"
        return None


# -- domainbus --------------------------------------------------------------------------------


def _domainbus(module: str) -> Callable[[Wiring], contextlib.AbstractContextManager[Bus]]:
    @contextlib.contextmanager
    def connect(wiring: Wiring) -> Iterator[Bus]:
        backend = importlib.import_module(module)
        dispatcher = backend.Dispatcher()
        for event_type, handler in wiring.routes:
            dispatcher.register_handler(event_type, handler)
        yield Bus(
            publish=dispatcher.dispatch,
            publish_many=dispatcher.dispatch_batch,
            publish_many_async=getattr(dispatcher, "dispatch_batch_async", None),
            dispatcher=dispatcher,
            backend=backend,
        )
        dispatcher.clear()

    return connect


# -- the article ------------------------------------------------------------------------------
# From "Decoupling Business Logic with Domain Event Dispatch and Handling" (James Reed, Leapcell),
# the article domainbus starts from: its event_dispatcher.py exactly as written, except that the
# print() in the `else` branch (no handler registered) is removed and the annotations use
# built-in generics. A dict of lists keyed by the exact type of the event.


class EventDispatcher:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], Any]]] = defaultdict(list)

    def register_handler(self, event_type: type, handler: Callable[[Any], Any]) -> None:
        self._handlers[event_type].append(handler)

    def dispatch(self, event: Any) -> None:
        if type(event) in self._handlers:
            for handler in self._handlers[type(event)]:
                handler(event)


def _loop(publish: Callable[[Any], object]) -> Callable[[Sequence[Any]], None]:
    """A batch for a system without one: its single-event call in a Python loop."""

    def publish_many(events: Sequence[Any]) -> None:
        for event in events:
            publish(event)

    return publish_many


@contextlib.contextmanager
def _article(wiring: Wiring) -> Iterator[Bus]:
    dispatcher = EventDispatcher()
    for event_type, handler in wiring.routes:
        dispatcher.register_handler(event_type, handler)
    yield Bus(publish=dispatcher.dispatch, publish_many=_loop(dispatcher.dispatch))


# -- the floor --------------------------------------------------------------------------------


@contextlib.contextmanager
def _floor(wiring: Wiring) -> Iterator[Bus]:
    """Each handler mapped over the events with no routing at all: the cost of the calls alone.

    Only defined when every handler is meant for every event (as in every workload here).
    """
    handlers = wiring.handlers()
    for handler in handlers:
        bases = tuple(t for t, h in wiring.routes if h is handler)
        if not all(issubclass(t, bases) for t in wiring.event_types):
            raise NotApplicable("the floor needs every handler to receive every event")

    def publish_many(events: Sequence[Any]) -> None:
        for handler in handlers:
            deque(map(handler, events), maxlen=0)

    def publish(event: Any) -> None:
        for handler in handlers:
            handler(event)

    async def publish_many_async(events: Sequence[Any]) -> None:
        if len(handlers) == 1:  # the loop a user would write for one handler
            (handler,) = handlers
            for event in events:
                await handler(event)
            return
        for event in events:
            for handler in handlers:
                await handler(event)

    yield Bus(
        publish=handlers[0] if len(handlers) == 1 else publish,
        publish_many=publish_many,
        publish_many_async=publish_many_async,
    )


# -- peers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _blinker(wiring: Wiring) -> Iterator[Bus]:
    """One `blinker.Signal` per event class; the event is the sender (receivers get it first)."""
    import blinker

    signals: dict[type, blinker.Signal] = {}
    for event_type, handler in wiring.routes:
        signals.setdefault(event_type, blinker.Signal()).connect(handler)
    for event_type in wiring.event_types:
        signals.setdefault(event_type, blinker.Signal())

    def publish(event: Any) -> None:
        signals[type(event)].send(event)

    def publish_many(events: Sequence[Any]) -> None:
        for event in events:
            signals[type(event)].send(event)

    async def publish_many_async(events: Sequence[Any]) -> None:
        for event in events:
            await signals[type(event)].send_async(event)

    yield Bus(publish=publish, publish_many=publish_many, publish_many_async=publish_many_async)


PYEE_ASYNC_CHUNK = 1_000  # events emitted before waiting for the tasks pyee has started


@contextlib.contextmanager
def _pyee(wiring: Wiring) -> Iterator[Bus]:
    """A `pyee.EventEmitter` with the event class name as the event name; for async handlers an
    `AsyncIOEventEmitter`, which starts each call as a task: the bus emits a chunk of events,
    then waits for their tasks (`wait_for_complete`), so memory stays bounded."""
    import pyee
    from pyee.asyncio import AsyncIOEventEmitter

    emitter, async_emitter = pyee.EventEmitter(), AsyncIOEventEmitter()
    for event_type, handler in wiring.routes:
        emitter.add_listener(event_type.__name__, handler)
        async_emitter.add_listener(event_type.__name__, handler)
    emit = emitter.emit

    def publish(event: Any) -> None:
        emit(type(event).__name__, event)

    def publish_many(events: Sequence[Any]) -> None:
        for event in events:
            emit(type(event).__name__, event)

    async def publish_many_async(events: Sequence[Any]) -> None:
        emit_async = async_emitter.emit
        for start in range(0, len(events), PYEE_ASYNC_CHUNK):
            for event in events[start : start + PYEE_ASYNC_CHUNK]:
                emit_async(type(event).__name__, event)
            await async_emitter.wait_for_complete()

    yield Bus(publish=publish, publish_many=publish_many, publish_many_async=publish_many_async)
    emitter.remove_all_listeners()
    async_emitter.remove_all_listeners()


@contextlib.contextmanager
def _zope_event(wiring: Wiring) -> Iterator[Bus]:
    """`zope.event.classhandler` (walks the MRO on every event). zope.event's registry is
    global: it is emptied for the run and restored afterwards."""
    import zope.event  # type: ignore[import-untyped]
    import zope.event.classhandler as classhandler  # type: ignore[import-untyped]

    saved_subscribers = list(zope.event.subscribers)
    saved_registry = dict(classhandler.registry)
    zope.event.subscribers[:] = []
    classhandler.registry.clear()
    try:
        for event_type, handler in wiring.routes:
            classhandler.handler(event_type, handler)
        notify = zope.event.notify
        yield Bus(publish=notify, publish_many=_loop(notify))
    finally:
        zope.event.subscribers[:] = saved_subscribers
        classhandler.registry.clear()
        classhandler.registry.update(saved_registry)


def _topic_paths(wiring: Wiring) -> dict[type, str]:
    """PyPubSub topic names mirroring the class chain (`Level0.Level5.Leaf3`), so that a message
    sent on a class's topic also reaches the listeners of its base classes' topics."""
    routed = {event_type for event_type, _ in wiring.routes}
    paths = {
        event_type: ".".join(
            k.__name__ for k in reversed(event_type.__mro__) if k in routed or k is event_type
        )
        for event_type in (*routed, *wiring.event_types)
    }
    for event_type in wiring.event_types:
        for base in routed:
            if issubclass(event_type, base) and not f"{paths[event_type]}.".startswith(
                f"{paths[base]}."
            ):
                raise NotApplicable("PyPubSub's topic tree cannot mirror multiple inheritance")
    return paths


@contextlib.contextmanager
def _pypubsub(wiring: Wiring) -> Iterator[Bus]:
    """A private `pubsub.core.Publisher`; one topic per class, nested as the classes are."""
    from pubsub.core.publisher import Publisher

    publisher = Publisher()
    topics = _topic_paths(wiring)
    for event_type, handler in wiring.routes:
        publisher.subscribe(handler, topics[event_type])
    send = publisher.sendMessage

    def publish(event: Any) -> None:
        send(topics[type(event)], event=event)

    def publish_many(events: Sequence[Any]) -> None:
        for event in events:
            send(topics[type(event)], event=event)

    yield Bus(publish=publish, publish_many=publish_many)
    publisher.unsubAll()


SYSTEMS: tuple[System, ...] = (
    System(
        "domainbus-rust",
        "domainbus.rust.Dispatcher",
        _domainbus("domainbus.rust"),
        "mro",
        "domainbus.rust",
        "build the extension: maturin develop --release",
    ),
    System("domainbus-pure", "domainbus.pure.Dispatcher", _domainbus("domainbus.pure"), "mro"),
    System(
        "article", "the article's EventDispatcher (dict of lists, exact type)", _article, "exact"
    ),
    System("floor", "each handler mapped over the events, no routing", _floor, "none"),
    System(
        "blinker",
        "one blinker.Signal per class",
        _blinker,
        "exact",
        "blinker",
        "pip install blinker",
    ),
    System(
        "pyee", "pyee.EventEmitter, class name as event", _pyee, "exact", "pyee", "pip install pyee"
    ),
    System(
        "zope.event",
        "zope.event.classhandler",
        _zope_event,
        "mro",
        "zope.event",
        "pip install zope.event",
    ),
    System("pypubsub", "PyPubSub topic tree", _pypubsub, "mro", "pubsub", "pip install PyPubSub"),
)
REFERENCE = "domainbus-rust"  # the system every ratio is taken against


def by_name(names: Sequence[str]) -> list[System]:
    """The systems named, in registry order; ValueError naming any unknown name."""
    known = {system.name: system for system in SYSTEMS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [system for system in SYSTEMS if system.name in names]

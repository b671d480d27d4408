"""Event-sourced aggregates: state rebuilt by folding the stream's events through mutators.

    class Account(Aggregate):
        @classmethod
        def open(cls, account_id: str, owner: str) -> Account:
            account = cls(account_id)
            account.record(Opened(account_id=account_id, owner=owner))
            return account

        @applies(Opened)
        def _opened(self, event: Opened) -> None:
            self.owner, self.balance = event.owner, 0

    repository = Repository(store, Account, snapshot_every=100)
    repository.save(account)                 # appends the pending events, expected version
    account = repository.get("acc-1")        # latest state; get(id, version=3): as it was

Mutators are routed with the dispatcher's rules (a mutator for a base event class sees its
subclasses too; several matching mutators run in registration order, base classes' first).
Each aggregate class has a `Dispatcher` per thread whose handlers are the mutators bound to the
aggregate being rebuilt (`functools.partial` objects rebound in place for each rebuild), so a
rebuild is one decode call and one `dispatch_batch` per page of rows, and the Rust batch loop
calls each mutator directly: no Python code runs per event but the mutators.

Snapshots (`snapshot_every=N`): when a save takes the stream past a multiple of N, the
aggregate's state (its attributes, msgpack-encoded; annotated attributes come back as their
annotated types) is stored with the version; `get` starts from the newest usable one. A
snapshot is ignored when it was written by another class or another `class_version`: bump
`class_version` when the mutators or the attributes change meaning.
"""

from __future__ import annotations

import functools
import threading
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

import domainbus
from domainbus.aggregate import AggregateRoot
from domainbus.events import DomainEvent
from domainbus.eventstore._marks import marked_methods
from domainbus.eventstore.store import DEFAULT_PAGE_SIZE, EventStore, Snapshot

__all__ = ["Aggregate", "AggregateNotFound", "Repository", "applies"]

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="Aggregate")
_MARK = "_domainbus_applies"
_PENDING: Any = AggregateRoot.__dict__["_domainbus_events"]


def applies(*event_types: type) -> Callable[[F], F]:
    """Mark a method `(self, event)` as the mutator of these event types (and subclasses)."""
    if not event_types or not all(isinstance(t, type) for t in event_types):
        raise TypeError("applies() needs one or more event classes")

    def mark(method: F) -> F:
        if not callable(method):
            raise TypeError(f"applies() decorates methods, not {type(method).__qualname__}")
        setattr(method, _MARK, (*getattr(method, _MARK, ()), *event_types))
        return method

    return mark


class AggregateNotFound(LookupError):
    """The repository has no events for this aggregate id."""

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.aggregate_id = aggregate_id

    def __str__(self) -> str:
        return f"no events for aggregate {self.aggregate_id!r}"


class _Folder:
    """One thread's dispatcher for one aggregate class. Its handlers are
    `functools.partial(mutator, aggregate)` objects whose bound aggregate is swapped in
    place (`__setstate__`) for each fold, so the batch loop calls each mutator directly:
    no Python frame between the dispatcher and the mutator."""

    __slots__ = ("current", "dispatch_batch", "handlers_for", "partials")

    def __init__(self, cls: type, dispatcher_type: Callable[[], Any]) -> None:
        dispatcher = dispatcher_type()
        self.partials: list[functools.partial[Any]] = []
        for _, event_type, function in marked_methods(cls, _MARK):
            bound = functools.partial(function, None)
            self.partials.append(bound)
            dispatcher.register_handler(event_type, bound)
        self.current: Any = None
        self.dispatch_batch: Callable[[Iterable[object]], int] = dispatcher.dispatch_batch
        self.handlers_for: Callable[[type], tuple[Any, ...]] = dispatcher.handlers_for

    def _bind(self, aggregate: Any) -> None:
        for bound in self.partials:
            bound.__setstate__((bound.func, (aggregate,), None, None))  # type: ignore[attr-defined]
        self.current = aggregate

    def fold(self, aggregate: Any, events: Any) -> None:
        previous = self.current
        if previous is not aggregate:
            self._bind(aggregate)
        try:
            self.dispatch_batch(events)
        finally:
            if previous is not aggregate:
                self._bind(previous)

    def apply(self, aggregate: Any, event: object) -> None:
        """One event, as `record` applies it (the same routing, called directly)."""
        for handler in self.handlers_for(type(event)):
            handler.func(aggregate, event)


_folders = threading.local()


def _folder(cls: type) -> _Folder:
    """The calling thread's folder of `cls` for the current `domainbus.Dispatcher` class."""
    dispatcher_type = domainbus.Dispatcher
    try:
        table: dict[tuple[type, Any], _Folder] = _folders.table
    except AttributeError:
        table = _folders.table = {}
    key = (cls, dispatcher_type)
    folder = table.get(key)
    if folder is None:
        folder = table[key] = _Folder(cls, dispatcher_type)
    return folder


class Aggregate(AggregateRoot):
    """Base class of event-sourced aggregates: `id`, `version` (events applied, the pending
    ones included) and `record(event)`, which applies the event's mutators at once and keeps
    the event pending until `Repository.save`.

    Rebuilding does not call `__init__`: it makes an empty instance with `id` and `version`
    set and folds the events, so `__init__` may record a creation event.
    """

    class_version: ClassVar[int] = 1
    id: str
    version: int

    def __init__(self, id: str) -> None:
        if not isinstance(id, str) or not id:
            raise TypeError(f"an aggregate id must be a non-empty str, not {id!r}")
        self.id = id
        self.version = 0

    def record(self, event: object) -> None:
        """Apply `event` (its mutators) and keep it pending for `Repository.save`."""
        if isinstance(event, type):
            raise TypeError(f"record() needs an event instance, not the class {event.__qualname__}")
        _folder(type(self)).apply(self, event)
        self.version += 1
        super().record(event)

    @property
    def pending_events(self) -> list[Any]:
        """The recorded events not saved yet (a copy)."""
        try:
            return list(_PENDING.__get__(self, type(self)))
        except AttributeError:
            return []

    @classmethod
    def _blank(cls, aggregate_id: str) -> Any:
        aggregate = cls.__new__(cls)
        aggregate.id = aggregate_id
        aggregate.version = 0
        return aggregate

    def __snapshot_state__(self) -> dict[str, Any]:
        """The state a snapshot stores: the instance's attributes."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_domainbus")}

    def __restore_state__(self, state: dict[str, Any]) -> None:
        """Set the attributes a snapshot stored."""
        vars(self).update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.id!r} version {self.version}>"


_STATE_DECODER = msgspec.msgpack.Decoder(dict[str, Any])


def _hints(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # annotations that do not resolve: restore untyped
        return {}
    return {
        name: hint
        for name, hint in hints.items()
        if typing.get_origin(hint) is not ClassVar and hint is not ClassVar
    }


class Repository(Generic[A]):
    """Loads and saves aggregates of one class in an event store.

    `snapshot_every`: store a snapshot each time a save crosses a multiple of this many
    events (None: never). `page_size`: rows read and folded per call when rebuilding.
    """

    def __init__(
        self,
        store: EventStore,
        aggregate_class: type[A],
        *,
        snapshot_every: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        if not (isinstance(aggregate_class, type) and issubclass(aggregate_class, Aggregate)):
            raise TypeError(f"aggregate_class must subclass Aggregate, not {aggregate_class!r}")
        if snapshot_every is not None and (type(snapshot_every) is not int or snapshot_every < 1):
            raise ValueError(f"snapshot_every must be an int >= 1 or None, not {snapshot_every!r}")
        if type(page_size) is not int or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, not {page_size!r}")
        self.store = store
        self.aggregate_class = aggregate_class
        self.snapshot_every = snapshot_every
        self.page_size = page_size
        self.topic = f"{aggregate_class.__module__}.{aggregate_class.__qualname__}"
        self._hints: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Repository {self.aggregate_class.__qualname__} in {self.store!r}>"

    def get(self, aggregate_id: str, version: int | None = None) -> A:
        """The aggregate rebuilt from its events (up to `version`: the state it had then).

        AggregateNotFound when it has no events; ValueError when `version` is beyond them.
        """
        if version is not None and (type(version) is not int or version < 1):
            raise ValueError(f"version must be an int >= 1 or None, not {version!r}")
        aggregate, start = self._start(aggregate_id, version)
        fold = _folder(self.aggregate_class).fold
        applied = 0
        for events in self.store.read_stream_pages(aggregate_id, start, version, self.page_size):
            fold(aggregate, events)
            applied += len(events)
            aggregate.version = start - 1 + applied
        if aggregate.version == 0:
            raise AggregateNotFound(aggregate_id)
        if version is not None and aggregate.version < version:
            raise ValueError(
                f"aggregate {aggregate_id!r} has {aggregate.version} events, not {version}"
            )
        return aggregate  # type: ignore[no-any-return]

    def _start(self, aggregate_id: str, version: int | None) -> tuple[Any, int]:
        """A blank aggregate and version 1, or one restored from a usable snapshot."""
        blank = self.aggregate_class._blank(aggregate_id)
        if self.snapshot_every is None:
            return blank, 1
        snapshot = self.store.load_snapshot(aggregate_id, version)
        if (
            snapshot is None
            or snapshot.topic != self.topic
            or snapshot.class_version != self.aggregate_class.class_version
        ):
            return blank, 1
        blank.__restore_state__(self._decode_state(snapshot.state))
        blank.version = snapshot.version
        return blank, snapshot.version + 1

    def save(self, aggregate: A) -> list[DomainEvent]:
        """Append the aggregate's pending events, expecting the version it was loaded at;
        returns them (to dispatch, or `uow.record`). ConcurrencyError when the stream moved
        on meanwhile: nothing is written and the events stay pending."""
        if not isinstance(aggregate, self.aggregate_class):
            raise TypeError(
                f"this repository saves {self.aggregate_class.__qualname__}, "
                f"not {type(aggregate).__qualname__}"
            )
        events = aggregate.pull_events()
        if not events:
            return []
        expected = aggregate.version - len(events)
        every = self.snapshot_every
        snapshot_due = every is not None and aggregate.version // every > expected // every
        try:
            if snapshot_due:
                snapshot = Snapshot(
                    aggregate.id, aggregate.version, self.topic,
                    self.aggregate_class.class_version, self._encode_state(aggregate),
                )  # fmt: skip
                with self.store.transaction():
                    self.store.append(aggregate.id, events, expected_version=expected)
                    self.store.save_snapshot(snapshot)
            else:
                self.store.append(aggregate.id, events, expected_version=expected)
        except BaseException:
            _PENDING.__set__(aggregate, [*events, *aggregate.pull_events()])
            raise
        return events

    def _encode_state(self, aggregate: A) -> bytes:
        return msgspec.msgpack.encode(aggregate.__snapshot_state__())

    def _decode_state(self, data: bytes) -> dict[str, Any]:
        state = _STATE_DECODER.decode(data)
        if self._hints is None:
            self._hints = _hints(self.aggregate_class)
        for name, hint in self._hints.items():
            if name in state:
                state[name] = msgspec.convert(state[name], hint, strict=False)
        return state

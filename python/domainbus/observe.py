"""OpenTelemetry traces for domainbus: a span per dispatch, and context across the outbox and Redis.

    from domainbus.observe import instrument
    bus = instrument(dispatcher)            # same dispatch/dispatch_batch/..._async/execute
    bus.dispatch(OrderPlaced(...))          # one span "process OrderPlaced"

Spans follow OpenTelemetry's messaging semantic conventions where they fit: kind CONSUMER,
`messaging.system` = "domainbus", `messaging.operation.type` = "process",
`messaging.operation.name` = the method ("dispatch", "dispatch_batch", "execute"),
`messaging.destination.name` = the event type (a batch: the type of its events when they share
one, else "batch"), `messaging.message.id` = the event id (one event),
`messaging.batch.message_count` (a batch), `domainbus.outcome` = "ok" / "error", and on failure
`error.type` (the exception's qualified name), status ERROR and the exception as an event.
Wrapping a broker publisher (`instrument(RedisPublisher(...))`, the relay's target) gives
PRODUCER spans "publish <stream>" (`messaging.operation.type` = "publish").
`per_handler=True` adds a child span per handler call ("handle <type>", `domainbus.handler` =
`module.qualname`) for the handlers registered through the instrumented object.

Context across processes: `instrument()` (or `enable_propagation()`) turns on the capture of the
current W3C `traceparent` where events are stored: the unit of work writes it into the outbox
row (column `traceparent`, one per row), the Redis publisher into the stream entry (field
`traceparent`, one per frame: the context of the publishing code, e.g. the relay's span). The
relay and the Redis worker hand the stored values to the instrumented dispatcher, whose span
then has the stored context as its parent when the whole batch shares one, and one span link
per distinct origin otherwise (a batch of many requests has no single parent; links keep
every request's trace reachable).

Nothing here is imported by `import domainbus`; OpenTelemetry (`pip install domainbus[otel]`)
is imported when this module is. Without it, or without instrumentation, nothing changes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from domainbus import _trace
from domainbus._notes import describe_handler

__all__ = ["Instrumented", "disable_propagation", "enable_propagation", "instrument"]

SYSTEM = "domainbus"
_PROPAGATOR = TraceContextTextMapPropagator()


def _capture() -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def enable_propagation() -> None:
    """Store the current traceparent with outbox rows and Redis frames (see the module doc)."""
    _trace.capture = _capture


def disable_propagation() -> None:
    _trace.capture = None


def instrument(
    dispatcher: Any, tracer_provider: Any = None, *, per_handler: bool = False
) -> Instrumented:
    """An `Instrumented` wrapper of `dispatcher` (either backend); turns propagation on."""
    enable_propagation()
    return Instrumented(dispatcher, tracer_provider, per_handler=per_handler)


def _type_name(event: object) -> str:
    return type(event).__qualname__


def _event_id(event: object) -> str | None:
    value = getattr(event, "event_id", None)
    return None if value is None else str(value)


def _origins(traceparents: Sequence[str | None] | None) -> list[str]:
    """The distinct stored traceparents, in first-seen order."""
    if not traceparents:
        return []
    return list(dict.fromkeys(t for t in traceparents if t))


def _span_context(traceparent: str) -> Any:
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(ctx).get_span_context()
    return ctx if span_context.is_valid else None


class Instrumented:
    """`dispatcher` with a span around each dispatch; every other attribute is the dispatcher's."""

    def __init__(
        self, dispatcher: Any, tracer_provider: Any = None, *, per_handler: bool = False
    ) -> None:
        if not callable(getattr(dispatcher, "dispatch_batch", None)):
            raise TypeError(f"instrument() needs a dispatcher, not {type(dispatcher).__qualname__}")
        self.dispatcher = dispatcher
        self.per_handler = per_handler
        # a broker publisher (RedisPublisher): its spans are PRODUCER "publish" spans
        self.publishes = callable(getattr(dispatcher, "publish_batch", None))
        self._wrappers: dict[tuple[type, Any], Any] = {}  # (type, handler): its span wrapper
        self._tracer = trace.get_tracer("domainbus", tracer_provider=tracer_provider)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        return f"Instrumented({self.dispatcher!r}, per_handler={self.per_handler})"

    # -- spans -----------------------------------------------------------------------------

    @contextmanager
    def _span(self, operation: str, events: Sequence[object] | None, one: object) -> Iterator[Span]:
        verb = "publish" if self.publishes else "process"
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": verb,
            "messaging.operation.name": operation,
        }
        if events is None:
            destination = _type_name(one)
            event_id = _event_id(one)
            if event_id is not None:
                attributes["messaging.message.id"] = event_id
        else:
            types = {type(e) for e in events}
            destination = _type_name(events[0]) if len(types) == 1 else "batch"
            attributes["messaging.batch.message_count"] = len(events)
        if self.publishes:
            attributes["domainbus.event.type"] = destination
            destination = str(getattr(self.dispatcher, "stream", destination))
        attributes["messaging.destination.name"] = destination
        parent, links = self._incoming()
        with self._tracer.start_as_current_span(
            f"{verb} {destination}",
            context=parent,
            kind=SpanKind.PRODUCER if self.publishes else SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                _failed(span, exc)
                raise
            span.set_attribute("domainbus.outcome", "ok")

    def _incoming(self) -> tuple[Any, list[Link]]:
        origins = _origins(_trace.incoming.get())
        if not origins:
            return None, []
        if len(origins) == 1:
            return _span_context(origins[0]), []
        links = []
        for origin in origins:
            ctx = _span_context(origin)
            if ctx is not None:
                links.append(Link(trace.get_current_span(ctx).get_span_context()))
        return None, links

    # -- the dispatcher's surface ----------------------------------------------------------

    def dispatch(self, event: object) -> int:
        with self._span("dispatch", None, event):
            return int(self.dispatcher.dispatch(event))

    def dispatch_batch(self, events: Iterable[object]) -> int:
        batch = events if isinstance(events, list | tuple) else list(events)
        with self._span("dispatch_batch", batch, None):
            return int(self.dispatcher.dispatch_batch(batch))

    async def dispatch_async(self, event: object, *, concurrent: bool = False) -> int:
        with self._span("dispatch_async", None, event):
            return int(await self.dispatcher.dispatch_async(event, concurrent=concurrent))

    async def dispatch_batch_async(
        self, events: Iterable[object], *, concurrent: bool = False
    ) -> int:
        batch = events if isinstance(events, list | tuple) else list(events)
        with self._span("dispatch_batch_async", batch, None):
            return int(await self.dispatcher.dispatch_batch_async(batch, concurrent=concurrent))

    def execute(self, command: object, /) -> Any:
        with self._span("execute", None, command):
            return self.dispatcher.execute(command)

    # -- per-handler spans -----------------------------------------------------------------

    def register_handler(self, event_type: type, handler: Any, **options: Any) -> Any:
        """Register on the dispatcher; with `per_handler`, wrapped in a span per call.

        A `weak=True` handler is registered as is (no per-handler span): a wrapper held only
        weakly would be dropped at once, and holding it strongly would keep the target alive.
        """
        target = handler
        if self.per_handler and not options.get("weak", False):
            key = (event_type, handler)
            target = self._wrappers.get(key) or self._traced(event_type, handler)
            self._wrappers[key] = target
        self.dispatcher.register_handler(event_type, target, **options)
        return handler

    def unregister_handler(self, event_type: type, handler: Any) -> bool:
        """Unregister `handler` (or the span wrapper registered for it)."""
        target = self._wrappers.pop((event_type, handler), handler)
        return bool(self.dispatcher.unregister_handler(event_type, target))

    def handler(self, event_type: type, **options: Any) -> Callable[[Any], Any]:
        def decorator(handler: Any) -> Any:
            return self.register_handler(event_type, handler, **options)

        return decorator

    def _traced(self, event_type: type, handler: Any) -> Any:
        tracer, name = self._tracer, describe_handler(handler)
        span_name = f"handle {event_type.__qualname__}"

        def attributes(event: object) -> dict[str, Any]:
            found = {"messaging.system": SYSTEM, "domainbus.handler": name,
                     "messaging.destination.name": _type_name(event)}  # fmt: skip
            event_id = _event_id(event)
            if event_id is not None:
                found["messaging.message.id"] = event_id
            return found

        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def traced_async(event: object) -> Any:
                with _handler_span(tracer, span_name, attributes(event)):
                    return await handler(event)

            return traced_async

        @functools.wraps(handler)
        def traced(event: object) -> Any:
            with _handler_span(tracer, span_name, attributes(event)) as span:
                result = handler(event)
                if inspect.isawaitable(result):
                    span.set_attribute("domainbus.returned_awaitable", True)
                return result

        return traced


@contextmanager
def _handler_span(tracer: Any, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name, kind=SpanKind.INTERNAL, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:  # fmt: skip
        try:
            yield span
        except BaseException as exc:
            _failed(span, exc)
            raise
        span.set_attribute("domainbus.outcome", "ok")


def _failed(span: Span, exc: BaseException) -> None:
    span.set_attribute("domainbus.outcome", "error")
    span.set_attribute("error.type", f"{type(exc).__module__}.{type(exc).__qualname__}")
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))

"""domainbus.observe with the real OpenTelemetry SDK (in-memory exporter): a span per dispatch,
its messaging attributes, failures, per-handler spans (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from domainbus import DomainEvent
from domainbus.observe import instrument
from observe_support import Traces, traces_fixture  # noqa: F401


class Paid(DomainEvent):
    amount: int


class Shipped(DomainEvent):
    amount: int


def test_dispatch_opens_one_consumer_span(
    make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    seen: list[int] = []
    bus = instrument(make_dispatcher(), traces.provider)
    bus.register_handler(Paid, lambda e: seen.append(e.amount))
    event = Paid(amount=3)
    assert bus.dispatch(event) == 1
    (span,) = traces.spans()
    assert span.name == "process Paid" and span.kind is SpanKind.CONSUMER
    assert span.attributes["messaging.system"] == "domainbus"
    assert span.attributes["messaging.operation.type"] == "process"
    assert span.attributes["messaging.operation.name"] == "dispatch"
    assert span.attributes["messaging.destination.name"] == "Paid"
    assert span.attributes["messaging.message.id"] == str(event.event_id)
    assert span.attributes["domainbus.outcome"] == "ok"
    assert seen == [3]


def test_dispatch_batch_span_counts_the_batch(
    make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    bus = instrument(make_dispatcher(), traces.provider)
    bus.register_handler(Paid, lambda e: None)
    bus.dispatch_batch(Paid(amount=n) for n in range(4))
    bus.dispatch_batch([Paid(amount=1), Shipped(amount=2)])
    first, mixed = traces.spans()
    assert first.name == "process Paid"
    assert first.attributes["messaging.batch.message_count"] == 4
    assert mixed.name == "process batch"
    assert mixed.attributes["messaging.batch.message_count"] == 2


def test_a_failure_marks_the_span(make_dispatcher: Callable[..., Any], traces: Traces) -> None:
    def refuse(event: Paid) -> None:
        raise ValueError("declined")

    bus = instrument(make_dispatcher(), traces.provider)
    bus.register_handler(Paid, refuse)
    with pytest.raises(ValueError):
        bus.dispatch_batch([Paid(amount=1)])
    (span,) = traces.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "builtins.ValueError"
    assert span.attributes["domainbus.outcome"] == "error"
    assert [e.name for e in span.events] == ["exception"]


def test_per_handler_spans_are_children(
    make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    def bill(event: Paid) -> None:
        pass

    def refuse(event: Paid) -> None:
        raise KeyError("x")

    bus = instrument(make_dispatcher(on_error="collect"), traces.provider, per_handler=True)
    bus.register_handler(Paid, bill)
    bus.register_handler(Paid, refuse)
    with pytest.raises(BaseExceptionGroup) as caught:
        bus.dispatch(Paid(amount=1))
    # the failure note still names the user's handler, not a wrapper
    notes = "".join(caught.value.exceptions[0].__notes__)
    assert f"{__name__}.test_per_handler_spans_are_children.<locals>.refuse" in notes
    handled = traces.spans("handle Paid")
    (outer,) = traces.spans("process Paid")
    assert [s.attributes["domainbus.handler"].rsplit(".", 1)[1] for s in handled] == [
        "bill",
        "refuse",
    ]
    assert all(s.parent.span_id == outer.context.span_id for s in handled)
    assert [s.attributes["domainbus.outcome"] for s in handled] == ["ok", "error"]


def test_async_dispatch_spans(make_dispatcher: Callable[..., Any], traces: Traces) -> None:
    seen: list[int] = []

    async def handle(event: Paid) -> None:
        seen.append(event.amount)

    bus = instrument(make_dispatcher(), traces.provider, per_handler=True)
    bus.register_handler(Paid, handle)
    asyncio.run(bus.dispatch_async(Paid(amount=1)))
    asyncio.run(bus.dispatch_batch_async([Paid(amount=2), Paid(amount=3)]))
    assert seen == [1, 2, 3]
    names = [s.name for s in traces.spans()]
    assert names.count("handle Paid") == 3 and names.count("process Paid") == 2


def test_the_rest_of_the_dispatcher_shows_through(
    make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    dispatcher = make_dispatcher(on_error="collect")
    bus = instrument(dispatcher, traces.provider)
    assert bus.on_error == "collect" and bus.dispatcher is dispatcher
    with pytest.raises(TypeError, match="needs a dispatcher"):
        instrument(object(), traces.provider)


def test_observe_is_not_imported_by_domainbus() -> None:
    import subprocess
    import sys

    code = "import domainbus, sys; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_per_handler_wrappers_unregister_and_weak_handlers(
    make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    class Listener:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_paid(self, event: Paid) -> None:
            self.seen.append(event.amount)

    def bill(event: Paid) -> None:
        pass

    bus = instrument(make_dispatcher(), traces.provider, per_handler=True)
    bus.register_handler(Paid, bill)
    listener = Listener()
    bus.register_handler(Paid, listener.on_paid, weak=True)
    assert bus.dispatch(Paid(amount=1)) == 2 and listener.seen == [1]
    assert bus.unregister_handler(Paid, bill) is True
    del listener
    assert bus.dispatch(Paid(amount=2)) == 0
    assert len(traces.spans("handle Paid")) == 1  # bill's, once; the weak handler has none

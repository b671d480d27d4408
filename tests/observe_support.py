"""A real OpenTelemetry SDK tracer provider with an in-memory exporter, for the trace tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Traces:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self, name: str | None = None) -> list[Any]:
        found = list(self.exporter.get_finished_spans())
        return found if name is None else [s for s in found if s.name == name]


@pytest.fixture(name="traces")
def traces_fixture() -> Iterator[Traces]:
    from domainbus.observe import disable_propagation

    found = Traces()
    yield found
    disable_propagation()
    found.provider.shutdown()

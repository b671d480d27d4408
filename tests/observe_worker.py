"""A worker process for test_observe_redis: a RedisWorker dispatching through an instrumented
dispatcher whose spans (real OpenTelemetry SDK) are written as JSON lines to a file.

    python observe_worker.py REDIS_URL SPANS_FILE EXPECTED_EVENTS BACKEND
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from domainbus.observe import instrument
from domainbus.redis import RedisWorker
from redis_support import CODEC, Placed


class JsonLines(SpanExporter):
    """Each finished span as one JSON line: name, trace and span ids, parent span id."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            parent = span.parent
            record = {
                "name": span.name,
                "trace_id": f"{span.context.trace_id:032x}",
                "span_id": f"{span.context.span_id:016x}",
                "parent_span_id": None if parent is None else f"{parent.span_id:016x}",
                "attributes": dict(span.attributes or {}),
            }
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.file.close()


def main() -> None:
    url, spans_path, expected, backend = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(spans_path)))
    dispatcher = importlib.import_module(f"domainbus.{backend}").Dispatcher()
    bus = instrument(dispatcher, provider)
    seen: list[Placed] = []
    worker = RedisWorker(
        url, bus, codec=CODEC, stream="traced", group="g", partitions=2, block_ms=50,
        heartbeat_s=0.05, lease_ms=1000, freeze_gc=False,
    )  # fmt: skip

    def handle(event: Placed) -> None:
        seen.append(event)
        if len(seen) >= expected:
            worker.stop()

    bus.register_handler(Placed, handle)
    print("ready", flush=True)
    worker.run(handle_signals=False)
    provider.shutdown()


if __name__ == "__main__":
    main()

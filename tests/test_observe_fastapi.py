"""The issue's whole trace: an HTTP request to a FastAPI app (its server span continues the
caller's W3C traceparent header) records events in a unit of work whose dispatcher is an
instrumented RedisPublisher (an outbox behind it); a RedisWorker in another process handles them.
Every span, in both processes, belongs to the caller's trace."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from domainbus.observe import instrument
from domainbus.outbox import SqliteOutbox
from domainbus.redis import RedisPublisher
from domainbus.uow import UnitOfWork
from observe_support import Traces, traces_fixture  # noqa: F401
from redis_support import CODEC, PYTHON_EXE, Placed, subprocess_env

pytest.importorskip("fastapi", reason="needs fastapi (the test extra)")

from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

WORKER = Path(__file__).with_name("observe_worker.py")


def make_app(traces: Traces, publisher: Any, database: Path) -> FastAPI:
    app = FastAPI()
    tracer = traces.provider.get_tracer("http")

    @app.middleware("http")
    async def server_span(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        parent = propagate.extract(dict(request.headers))
        name = f"{request.method} {request.url.path}"
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER):
            return await call_next(request)

    @app.post("/orders/{key}")
    def place(key: str) -> dict[str, str]:
        connection = sqlite3.connect(database)
        try:
            with UnitOfWork(publisher, connection, outbox=SqliteOutbox(connection, CODEC)) as uow:
                uow.record(Placed(aggregate_id=key, seq=1))
        finally:
            connection.close()
        return {"placed": key}

    return app


def test_http_request_to_worker_process_is_one_trace(
    redis_server: Any, tmp_path: Path, backend: Any, traces: Traces
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    spans_file = tmp_path / "worker-spans.jsonl"
    worker = subprocess.Popen(
        [PYTHON_EXE, str(WORKER), redis_server.url, str(spans_file), "2",
         backend.__name__.rsplit(".", 1)[1]],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        publisher = instrument(RedisPublisher(r, CODEC, stream="traced", partitions=2),
                               traces.provider)  # fmt: skip
        client = TestClient(make_app(traces, publisher, tmp_path / "app.db"))
        with traces.tracer.start_as_current_span("checkout", kind=SpanKind.CLIENT) as caller:
            headers: dict[str, str] = {}
            propagate.inject(headers)
            for key in ("a", "b"):
                assert client.post(f"/orders/{key}", headers=headers).status_code == 200
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        r.close()
    trace_id = caller.get_span_context().trace_id
    servers = traces.spans("POST /orders/a") + traces.spans("POST /orders/b")
    publishes = traces.spans("publish traced")
    assert len(servers) == 2 and len(publishes) == 2
    assert {s.context.trace_id for s in servers + publishes} == {trace_id}
    assert {p.parent.span_id for p in publishes} == {s.context.span_id for s in servers}
    worker_spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    processed = [s for s in worker_spans if s["name"] == "process Placed"]
    assert processed and {s["trace_id"] for s in processed} == {f"{trace_id:032x}"}
    assert {s["parent_span_id"] for s in processed} <= {
        f"{p.context.span_id:016x}" for p in publishes
    }
    assert sum(s["attributes"]["messaging.batch.message_count"] for s in processed) == 2

"""Trace context through Redis, across processes: a request records an event (unit of work +
SQLite outbox), the relay publishes it with an instrumented RedisPublisher, and a RedisWorker in
another process dispatches it: the worker's span carries the request's trace id."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from domainbus.observe import instrument
from domainbus.outbox import SqliteOutbox
from domainbus.redis import RedisPublisher
from domainbus.redis.entries import TRACEPARENT
from domainbus.uow import UnitOfWork
from observe_support import Traces, traces_fixture  # noqa: F401
from redis_support import CODEC, PYTHON_EXE, Placed, subprocess_env

WORKER = Path(__file__).with_name("observe_worker.py")


def test_request_outbox_redis_worker_is_one_trace(
    redis_server: Any,
    tmp_path: Path,
    backend: Any,
    make_dispatcher: Callable[..., Any],
    traces: Traces,
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
        # the request: a unit of work whose post-commit dispatch failed (the broker was
        # down), so its events stay in the outbox for the relay, with the request's context
        connection = sqlite3.connect(tmp_path / "app.db")
        down = instrument(make_dispatcher(), traces.provider)

        def broker_down(event: Placed) -> None:
            raise ConnectionError("broker down")

        down.register_handler(Placed, broker_down)
        with traces.tracer.start_as_current_span("POST /orders") as request:
            with pytest.raises(ConnectionError):
                with UnitOfWork(down, connection, outbox=SqliteOutbox(connection, CODEC)) as uow:
                    uow.record(Placed(aggregate_id="a", seq=1))
                    uow.record(Placed(aggregate_id="b", seq=1))
        connection.close()
        publisher = instrument(RedisPublisher(r, CODEC, stream="traced", partitions=2),
                               traces.provider)  # fmt: skip
        with SqliteOutbox(tmp_path / "app.db", CODEC) as relay_outbox:
            assert relay_outbox.relay(publisher).delivered == 2
        frames = [f for p in range(2) for _, f in r.xrange(f"traced:{p}")]
        assert frames and all(TRACEPARENT in f for f in frames)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        r.close()
    request_ctx = request.get_span_context()
    (published,) = traces.spans("publish traced")
    assert published.parent is not None and published.parent.span_id == request_ctx.span_id
    assert published.attributes["messaging.operation.type"] == "publish"
    worker_spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    processed = [s for s in worker_spans if s["name"] == "process Placed"]
    assert len(processed) == len(frames)  # one span per frame the worker read
    for span in processed:
        assert span["trace_id"] == f"{request_ctx.trace_id:032x}"
        assert span["parent_span_id"] == f"{published.context.span_id:016x}"
    assert sum(s["attributes"]["messaging.batch.message_count"] for s in processed) == 2

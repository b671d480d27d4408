"""Failures domainbus handles for the user are logged under the `domainbus.*` loggers, with the
handler, the event type and id and the traceback; the library never prints (both backends)."""

from __future__ import annotations

import ast
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox
from domainbus.uow import UnitOfWork
from redis_support import CODEC as REDIS_CODEC
from redis_support import Poison

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "domainbus"


class Charged(DomainEvent):
    amount: int


CODEC = EventCodec(Charged)


def refuse(event: Charged) -> None:
    raise ValueError(f"card declined for {event.amount}")


def records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


def check_failure(record: logging.LogRecord, event: Any) -> None:
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert record.domainbus_handler == f"{__name__}.refuse"  # type: ignore[attr-defined]
    assert record.domainbus_event_type == type(event).__qualname__  # type: ignore[attr-defined]
    assert record.domainbus_event_id == str(event.event_id)  # type: ignore[attr-defined]
    text = record.getMessage()
    assert f"{__name__}.refuse" in text and str(event.event_id) in text


def test_relay_logs_each_failing_row_then_its_dead_letter(
    tmp_path: Path, make_dispatcher: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Charged, refuse)
    event = Charged(amount=5)
    with SqliteOutbox(tmp_path / "o.db", CODEC, max_attempts=2) as outbox:
        outbox.append([CODEC.encode(event)], claimed=False)
        caplog.set_level(logging.WARNING, logger="domainbus")
        for _ in range(2):
            with pytest.raises(ValueError):
                outbox.relay(dispatcher)
    logged = records(caplog, "domainbus.outbox")
    failures = [r for r in logged if r.exc_info is not None]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.ERROR]
    for record in failures:
        check_failure(record, event)
    assert "stays pending" in failures[0].getMessage()
    assert "dead-letter" in failures[1].getMessage()


def test_uow_dispatch_failure_after_commit_is_logged(
    tmp_path: Path, make_dispatcher: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Charged, refuse)
    connection = sqlite3.connect(tmp_path / "db.sqlite")
    outbox = SqliteOutbox(connection, CODEC)
    caplog.set_level(logging.WARNING, logger="domainbus")
    event = Charged(amount=7)
    with pytest.raises(ValueError), UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        uow.record(event)
    (record,) = records(caplog, "domainbus.uow")
    check_failure(record, event)
    assert "stays in the outbox" in record.getMessage()
    assert outbox.pending() == 1
    connection.close()


def test_redis_worker_logs_retries_and_dead_letters(
    redis_server: Any, make_dispatcher: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    from domainbus.redis import RedisPublisher, RedisWorker

    r = redis.Redis.from_url(redis_server.url)
    r.flushall()

    def refuse_poison(event: Poison) -> None:
        raise ValueError("poisoned")

    dispatcher = make_dispatcher()
    dispatcher.register_handler(Poison, refuse_poison)
    event = Poison(aggregate_id="k", seq=1)
    RedisPublisher(r, REDIS_CODEC, stream="s", partitions=2).publish_batch([event])
    caplog.set_level(logging.WARNING, logger="domainbus")
    worker = RedisWorker(
        r, dispatcher, codec=REDIS_CODEC, stream="s", group="g", lease_ms=1000,
        heartbeat_s=0.05, block_ms=50, freeze_gc=False, max_deliveries=2, retry_delay=0.01,
    )  # fmt: skip
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while worker.dead_letters < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(30)
    r.close()
    failures = [r for r in records(caplog, "domainbus.redis") if r.exc_info is not None]
    assert [rec.levelno for rec in failures] == [logging.WARNING, logging.ERROR]
    for record in failures:
        assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
        assert record.domainbus_handler.endswith("refuse_poison")  # type: ignore[attr-defined]
        assert record.domainbus_event_type == "Poison"  # type: ignore[attr-defined]
        assert record.domainbus_event_id == str(event.event_id)  # type: ignore[attr-defined]
    assert "delivery 1 of 2 failed" in failures[0].getMessage()
    assert "handler-failed" in failures[1].getMessage()


def test_projection_runner_failure_is_logged(
    tmp_path: Path, make_dispatcher: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    from domainbus.eventstore import Projection, ProjectionRunner, SqliteEventStore, handles

    class Totals(Projection):
        name = "totals"

        @handles(Charged)
        def charged(self, event: Charged) -> None:
            raise ValueError("no table")

    store = SqliteEventStore(str(tmp_path / "events.db"), CODEC)
    event = Charged(amount=3)
    store.append("card-1", [event], expected_version=0)
    caplog.set_level(logging.WARNING, logger="domainbus")
    runner = ProjectionRunner(store, Totals(sqlite3.connect(tmp_path / "read.db")))
    with pytest.raises(ValueError):
        runner.catch_up()
    (record,) = records(caplog, "domainbus.eventstore")
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.domainbus_handler.endswith("charged")  # type: ignore[attr-defined]
    assert record.domainbus_event_id == str(event.event_id)  # type: ignore[attr-defined]


def test_the_library_never_prints() -> None:
    """No print() call outside the command-line modules (their output is the point)."""
    allowed = {"cli.py", "demo.py", "__main__.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in allowed or "bench" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_redis_worker_logs_a_lost_connection(
    start_redis: Any, make_dispatcher: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    from domainbus.redis import RedisPublisher, RedisWorker

    server = start_redis()
    r = redis.Redis.from_url(server.url)
    RedisPublisher(r, REDIS_CODEC, stream="s", partitions=1).publish_batch(
        [Poison(aggregate_id="k", seq=1)]
    )
    r.close()
    seen: list[Poison] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Poison, seen.append)
    caplog.set_level(logging.WARNING, logger="domainbus")
    worker = RedisWorker(
        server.url, dispatcher, codec=REDIS_CODEC, stream="s", group="g", lease_ms=1000,
        heartbeat_s=0.05, block_ms=50, freeze_gc=False,
    )  # fmt: skip
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()

    def lost() -> list[logging.LogRecord]:
        return [
            rec for rec in records(caplog, "domainbus.redis")
            if "connection lost" in rec.getMessage() or "retrying in" in rec.getMessage()
        ]  # fmt: skip

    while not lost() and time.monotonic() < deadline:
        time.sleep(0.01)
    server.start()
    worker.stop()
    thread.join(30)
    assert not thread.is_alive() and len(seen) == 1
    found = lost()
    assert found, "no record of the lost connection"
    assert any(rec.exc_info is not None for rec in found if "connection lost" in rec.getMessage())

"""The server fixtures start real servers: a command round trip on each."""

from __future__ import annotations

from typing import Any

import pytest


def test_redis_server_answers(redis_server: Any) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_server.url)
    client.set("domainbus:ping", "pong")
    assert client.get("domainbus:ping") == b"pong"
    assert tuple(int(p) for p in client.info()["redis_version"].split(".")[:2]) >= (6, 2)


def test_redis_restart_keeps_the_append_only_file(start_redis: Any) -> None:
    redis = pytest.importorskip("redis")
    server = start_redis(appendonly=True)
    redis.Redis.from_url(server.url).xadd("s", {"k": "v"})
    server.restart()
    assert redis.Redis.from_url(server.url).xlen("s") == 1


def test_postgres_database_is_fresh_and_writable(postgres_dsn: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 130000

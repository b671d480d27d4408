"""Worker processes (`domainbus worker`) against a real redis-server, crashing on purpose:

- 4 workers, 16 partitions, one SIGKILLed midway: every event handled exactly once by an
  idempotent handler (effects and idempotency records in one SQLite transaction per entry,
  shared by the workers), each key's events in order (200,000 events; 1,000,000 too under
  CI=true or `-m slow`);
- Redis restarted mid-run with the append-only file on: the workers reconnect, nothing lost;
- outbox -> relay -> Redis -> worker with the relay SIGKILLed midway: nothing lost.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from domainbus.outbox import SqliteOutbox
from domainbus.redis import RedisPublisher
from redis_handlers import open_store
from redis_support import CODEC, PYTHON_EXE, placed, subprocess_env
from test_redis_worker import pending, wait_for

KEYS = 64


class Workers:
    """`domainbus worker` processes sharing one SQLite database of handled events."""

    def __init__(self, url: str, db: Path, tmp: Path, **env: str) -> None:
        self.url, self.db, self.tmp = url, db, tmp
        self.env = subprocess_env(DOMAINBUS_TEST_DB=str(db), **env)
        self.processes: list[subprocess.Popen[bytes]] = []
        open_store(str(db)).close()

    def start(self, name: str, partitions: int) -> subprocess.Popen[bytes]:
        args = [
            PYTHON_EXE, "-m", "domainbus", "worker", "redis_handlers:counting",
            "--redis", self.url, "--stream", "s", "--group", "g", "--consumer", name,
            "--partitions", str(partitions), "--lease-ms", "1500", "--heartbeat", "0.1",
            "--retry-delay", "0.05", "--report-every", "1",
        ]  # fmt: skip
        log = open(self.tmp / f"{name}.log", "wb")
        process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def handled(self) -> int:
        with sqlite3.connect(self.db, timeout=30) as db:
            return int(db.execute("SELECT n FROM handled_count").fetchone()[0])

    def check_alive(self) -> None:
        for p in self.processes:
            if p.poll() not in (None, -signal.SIGKILL):
                raise AssertionError(f"worker exited with {p.returncode}: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.tmp.glob("*.log")))

    def stop(self) -> list[int | None]:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return [p.wait(30) for p in self.processes]

    def kill_all(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    def results(self) -> tuple[int, int, list[Any], dict[str, int]]:
        with sqlite3.connect(self.db, timeout=30) as db:
            count = int(db.execute("SELECT n FROM handled_count").fetchone()[0])
            ids = int(db.execute("SELECT count(*) FROM domainbus_processed").fetchone()[0])
            wrong = db.execute("SELECT * FROM out_of_order LIMIT 10").fetchall()
            last = dict(db.execute("SELECT key, seq FROM last_seq").fetchall())
        return count, ids, wrong, last


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    made: list[Workers] = []

    def make(url: str, **env: str) -> Workers:
        made.append(Workers(url, tmp_path / "handled.db", tmp_path, **env))
        return made[-1]

    yield make
    for w in made:
        w.kill_all()


def wait_handled(w: Workers, count: int, what: str, timeout: float = 240.0) -> None:
    def done() -> bool:
        w.check_alive()
        return w.handled() >= count

    wait_for(done, what, timeout)


def check_exactly_once_in_order(w: Workers, total: int) -> None:
    count, ids, wrong, last = w.results()
    assert wrong == [], w.logs()
    assert count == total
    assert ids == total
    assert last == {f"k{k}": total // KEYS - 1 for k in range(KEYS)}


def four_workers_one_killed(url: str, workers: Any, total: int) -> None:
    r = redis.Redis.from_url(url)
    r.flushall()
    publisher = RedisPublisher(r, CODEC, stream="s", partitions=16)
    w = workers(url)
    half = total // 2
    publisher.publish_batch(placed(half, keys=KEYS))
    started = [w.start(f"w{n}", 16) for n in range(4)]
    wait_handled(w, total // 5, "a fifth of the events")
    victim = started[1]
    victim.kill()  # SIGKILL: no batch finished, no lease released
    victim.wait()
    for start in range(half, total, 50_000):
        publisher.publish_batch(placed(min(50_000, total - start), keys=KEYS, start=start))
    wait_handled(w, total, "every event")
    codes = w.stop()
    assert codes == [0, -signal.SIGKILL, 0, 0], w.logs()
    check_exactly_once_in_order(w, total)
    assert pending(r, "s", "g", 16) == 0
    assert r.keys("s:g:lease:*") == []
    assert b"events/s" in (w.tmp / "w0.log").read_bytes()


def test_four_workers_one_killed_midway(redis_server: Any, workers: Any) -> None:
    four_workers_one_killed(redis_server.url, workers, 200_000)


@pytest.mark.slow
def test_four_workers_one_killed_midway_a_million(
    redis_server: Any, workers: Any, request: pytest.FixtureRequest
) -> None:
    selected = "slow" in (request.config.getoption("markexpr") or "")
    if not selected and os.environ.get("CI", "").lower() != "true":
        pytest.skip("1,000,000 events (~40 s idle, minutes on a busy machine): CI=true or -m slow")
    four_workers_one_killed(redis_server.url, workers, 1_000_000)


def publish_retrying(publisher: RedisPublisher, events: list[Any]) -> None:
    """Publish, retrying while the server restarts (at least once: duplicates are fine)."""
    for _ in range(200):
        try:
            publisher.publish_batch(events)
            return
        except Exception:
            time.sleep(0.05)
    raise AssertionError("the server did not come back")


def test_redis_restarted_mid_run_loses_nothing(start_redis: Any, workers: Any) -> None:
    server = start_redis(appendonly=True)
    publisher = RedisPublisher(server.url, CODEC, stream="s", partitions=8)
    w = workers(server.url, DOMAINBUS_BACKEND="pure")
    total = 64_000
    publish_retrying(publisher, list(placed(total // 2, keys=KEYS)))
    w.start("a", 8)
    w.start("b", 8)
    wait_handled(w, total // 8, "an eighth of the events")
    server.stop()  # SIGTERM: Redis writes its append-only file
    time.sleep(1.0)  # an outage the workers notice (not a timing assertion)
    server.start()  # same port, same folder: the streams, groups and leases come back
    # half of the events are published only now: the workers consume across the restart
    for start in range(total // 2, total, 4_000):
        publish_retrying(publisher, list(placed(4_000, keys=KEYS, start=start)))
    wait_handled(w, total, "every event after the restart")
    assert w.stop() == [0, 0], w.logs()
    check_exactly_once_in_order(w, total)
    assert "connection lost" in w.logs()


RELAY = """
import sys
from domainbus.outbox import SqliteOutbox
from domainbus.redis import RedisPublisher
from redis_support import CODEC
outbox = SqliteOutbox(sys.argv[1], CODEC)
publisher = RedisPublisher(sys.argv[2], CODEC, stream="s", partitions=8)
take_over = sys.argv[3] == "take-over"
while outbox.pending():
    outbox.relay(publisher, batch_size=500, take_over=take_over)
print("relayed")
"""


def test_outbox_relay_killed_midway_loses_nothing(
    redis_server: Any, workers: Any, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    total = 64_000
    app = tmp_path / "app.db"
    outbox = SqliteOutbox(app, CODEC)
    outbox.begin()
    outbox.append([CODEC.encode(e) for e in placed(total, keys=KEYS)], claimed=False)
    outbox.commit()
    w = workers(redis_server.url)
    w.start("a", 8)
    w.start("b", 8)
    env = subprocess_env()
    relay = subprocess.Popen([PYTHON_EXE, "-c", RELAY, str(app), redis_server.url, "-"], env=env)
    wait_for(lambda: outbox.pending() < total * 2 // 3, "a third relayed")
    relay.kill()
    relay.wait()
    left = outbox.pending()
    assert 0 < left < total
    finish = subprocess.run(
        [PYTHON_EXE, "-c", RELAY, str(app), redis_server.url, "take-over"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert finish.returncode == 0, finish.stderr.decode()
    assert outbox.pending() == 0
    wait_handled(w, total, "every event")
    assert w.stop() == [0, 0], w.logs()
    check_exactly_once_in_order(w, total)

"""The `domainbus publish`, `worker` and `dead-letters` commands, and the lazy import."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from domainbus import demo
from domainbus.cli import main
from domainbus.redis.entries import COUNT, EVENTS, FORMAT, FORMAT_VERSION, TRACEPARENT
from redis_support import CODEC, PYTHON_EXE, Placed, subprocess_env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON_EXE, "-m", "domainbus", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_domainbus_does_not_import_redis() -> None:
    code = (
        "import sys, domainbus, domainbus.cli, domainbus.redis, domainbus.redis.cli; "
        "domainbus.cli.build_parser(); print('redis' in sys.modules)"
    )
    out = subprocess.run(
        [PYTHON_EXE, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_without_redis_py_the_commands_say_what_to_install() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from domainbus.cli import main\n"
        "assert main(['info']) == 0\n"
        "sys.exit(main(['worker', 'm:d', '--redis', 'redis://x', '--stream', 's', "
        "'--group', 'g']))"
    )
    out = subprocess.run(
        [PYTHON_EXE, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    assert "pip install 'domainbus[redis]'" in out.stderr


def test_publish_a_generated_file_and_manage_dead_letters(
    redis_server: Any, tmp_path: Path, capsys: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    path = tmp_path / "events.msgpack"
    assert main(["generate", str(path), "--count", "5000", "--types", "3"]) == 0
    capsys.readouterr()
    url = redis_server.url
    assert main(["publish", str(path), "--redis", url, "--stream", "cli", "--partitions", "4"]) == 0
    assert "published 5,000 events to cli (4 partitions)" in capsys.readouterr().out
    counted = 0
    for p in range(4):
        for _, fields in client.xrange(f"cli:{p}"):
            counted += len(demo.codec.decode_batch(fields[b"events"]))
    assert counted == 5000

    client.xadd("cli:dead", {"source": "cli:0", "events": b"\x90", "count": 0, "reason": "x"})
    assert main(["dead-letters", "list", "--redis", url, "--stream", "cli"]) == 0
    assert "1 dead letter(s) in cli:dead" in capsys.readouterr().out
    assert main(["dead-letters", "requeue", "--redis", url, "--stream", "cli"]) == 2
    assert "requeue takes dead-letter ids or --all" in capsys.readouterr().err
    assert main(["dead-letters", "requeue", "9-9", "--redis", url, "--stream", "cli"]) == 2
    assert "no dead letter with id 9-9" in capsys.readouterr().err
    assert main(["dead-letters", "requeue", "--all", "--redis", url, "--stream", "cli"]) == 0
    assert client.xlen("cli:dead") == 0


def test_publish_to_an_unreachable_redis_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "e.msgpack"
    assert main(["generate", str(path), "--count", "10"]) == 0
    out = run("publish", str(path), "--redis", "redis://127.0.0.1:1/0", "--stream", "s")
    assert out.returncode == 1
    assert "0 events were published before it" in out.stderr
    assert "Traceback" not in out.stderr


def test_worker_with_a_bad_target_is_a_usage_error() -> None:
    out = run("worker", "nosuchmodule:d", "--redis", "redis://127.0.0.1:1/0", "--stream", "s",
              "--group", "g")  # fmt: skip
    assert out.returncode == 2
    assert "cannot import module 'nosuchmodule'" in out.stderr


def test_worker_with_trace_continues_the_publishers_trace(
    redis_server: Any, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client.xadd("t:0", {
        FORMAT: FORMAT_VERSION, COUNT: b"2", TRACEPARENT: f"00-{trace_id}-{span_id}-01",
        EVENTS: CODEC.encode_batch([Placed(aggregate_id="a", seq=0)] * 2),
    })  # fmt: skip
    spans = tmp_path / "spans.jsonl"
    spans.touch()
    worker = subprocess.Popen(
        [PYTHON_EXE, "-m", "domainbus", "worker", "redis_traced:dispatcher", "--trace",
         "--redis", redis_server.url, "--stream", "t", "--group", "g", "--partitions", "1",
         "--heartbeat", "0.05"],
        env=subprocess_env(DOMAINBUS_TEST_SPANS=str(spans)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not spans.read_text() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    found = [json.loads(line) for line in spans.read_text().splitlines()]
    assert [(s["name"], s["trace_id"], s["parent_span_id"]) for s in found] == [
        ("process Placed", trace_id, span_id)
    ]


def test_trace_without_opentelemetry_is_a_usage_error() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from domainbus.cli import main\n"
        "sys.exit(main(['worker', 'nosuchmodule:d', '--trace', '--redis', "
        "'redis://127.0.0.1:1/0', '--stream', 's', '--group', 'g']))"
    )
    out = subprocess.run(
        [PYTHON_EXE, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "pip install 'domainbus[otel]'" in out.stderr


def test_worker_prints_the_metrics_table_at_the_end(redis_server: Any, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    path = tmp_path / "events.msgpack"
    assert main(["generate", str(path), "--count", "600", "--types", "2"]) == 0
    url = redis_server.url
    assert main(["publish", str(path), "--redis", url, "--stream", "m", "--partitions", "2"]) == 0
    args = [
        PYTHON_EXE, "-m", "domainbus", "worker", "domainbus.demo:noop_dispatcher",
        "--codec", "domainbus.demo:codec", "--redis", url, "--stream", "m", "--group", "g",
        "--report-every", "0.2", "--metrics",
    ]  # fmt: skip
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(args, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while " 600 events (" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
    text = log.read_text()
    assert "stopped after 600 events" in text, text
    assert "handlers, slowest first" in text
    cells = [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in text.splitlines()
        if "domainbus.demo." in line
    ]
    assert sum(int(row[2].replace(",", "")) for row in cells) == 3 * 600  # 3 handlers an event


def test_sigterm_while_the_worker_starts_is_a_clean_stop(redis_server: Any, tmp_path: Path) -> None:
    """SIGTERM before the worker consumes (here: while its module imports) stops it with exit
    0 and nothing read, as SIGTERM while consuming does; it used to kill it (exit -15)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.xadd("t:0", {
        FORMAT: FORMAT_VERSION, COUNT: b"1",
        EVENTS: CODEC.encode_batch([Placed(aggregate_id="a", seq=0)]),
    })  # fmt: skip
    importing = tmp_path / "importing"
    worker = subprocess.Popen(
        [PYTHON_EXE, "-m", "domainbus", "worker", "redis_slow_import:dispatcher",
         "--redis", redis_server.url, "--stream", "t", "--group", "g", "--partitions", "1"],
        env=subprocess_env(DOMAINBUS_TEST_IMPORTING=str(importing),
                           DOMAINBUS_TEST_IMPORT_SLEEP="2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not importing.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert "stopped after 0 events" in out, out

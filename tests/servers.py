"""Real Redis and PostgreSQL servers for the tests, from the machine's own binaries.

Each server runs in a temporary folder on an ephemeral loopback port and is stopped when the
test session (or the test that started it) ends. When a binary is missing the test is skipped,
except under CI=true, where it fails: CI must run every test that needs a server.

- `redis_server` (session): one shared `RedisServer`; tests use their own keys or `flushall`.
- `start_redis(tmp_path, appendonly=True)`: a private server a test may stop and restart.
- `postgres_server` (session): one shared `PostgresServer` (fsync off: the tests kill clients,
  not the server).
- `postgres_dsn` (function): a fresh, empty database on the shared server, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "PostgresServer",
    "RedisServer",
    "postgres_dsn",
    "postgres_server",
    "redis_server",
    "start_redis",
]


def _missing(what: str) -> None:
    """Skip the test, or fail it under CI (where every server test must run)."""
    message = f"{what} is not installed (apt-get install -y redis-server postgresql)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} at start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


# -- Redis -------------------------------------------------------------------------------------


class RedisServer:
    """A `redis-server` process in its own folder; `stop()` and `start()` keep the port and data."""

    def __init__(self, binary: str, folder: Path, *, appendonly: bool = False) -> None:
        self.binary = binary
        self.folder = folder
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.process, "redis-server", 10)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it writes its append-only file), or SIGKILL."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _redis_binary() -> str:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if binary is None:
        _missing("redis-server")
    assert binary is not None
    return binary


@contextlib.contextmanager
def running_redis(folder: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(_redis_binary(), folder, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[object]:
    """A factory: `start_redis(appendonly=True)` starts a private server, stopped after the test."""
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = False) -> RedisServer:
        folder = tmp_path / f"redis-{len(servers)}"
        folder.mkdir()
        server = RedisServer(_redis_binary(), folder, appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


# -- PostgreSQL --------------------------------------------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.insert(0, on_path)
    if not found:
        _missing("PostgreSQL (pg_ctl, initdb)")
    return Path(found[0]).parent


class PostgresServer:
    """An `initdb` cluster in a temporary folder, run by `pg_ctl` as a non-root user."""

    def __init__(self, bindir: Path, folder: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.folder = folder
        self.data = folder / "data"
        self.fsync = fsync
        self.port = free_port()
        self.user = "postgres"
        # root may not run PostgreSQL: run it as the `postgres` user when we are root
        self._as = {"user": "postgres"} if os.geteuid() == 0 else {}

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._as
        )

    def start(self) -> None:
        if self._as:
            shutil.chown(self.folder, "postgres", "postgres")
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                "-U", self.user, "-E", "UTF8", "--no-sync",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            f" -c fsync={'on' if self.fsync else 'off'} -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "postgres.log"), "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def running_postgres(*, fsync: bool = False) -> Iterator[PostgresServer]:
    bindir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="domainbus-pg-"))
    server = PostgresServer(bindir, folder, fsync=fsync)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the shared server (psycopg 3 needed), dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.dsn(name)
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

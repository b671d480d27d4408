"""Smoke test of an installed domainbus wheel, run by .ci/wheel-smoke in a fresh venv.

It checks what a user gets from `pip install domainbus-*.whl` alone: the package is imported
from the venv (not from a source tree), the Rust extension is the backend, and the public API
works end to end: a dispatch, a batch, a BatchQueue, and an outbox round trip through SQLite
(a unit of work that dispatches after commit, then rows left behind by a "crashed" process that
a second outbox on the same file relays). Exits non-zero with the failing check's message.
"""

from __future__ import annotations

import sqlite3
import sys
import sysconfig
import tempfile
from pathlib import Path

import domainbus
from domainbus import BatchQueue, Dispatcher, DomainEvent, UnitOfWork
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox


class UserRegistered(DomainEvent):
    user_id: str
    email: str


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"wheel smoke test FAILED: {what}")


def check_installed() -> None:
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    package = Path(domainbus.__file__).resolve().parent
    check(package.parent == site, f"domainbus imported from {package}, not from {site}")
    check(domainbus.BACKEND == "rust", f"backend is {domainbus.BACKEND!r}, not 'rust'")
    core = sys.modules["domainbus._core"]
    extension = Path(core.__file__ or "?")
    check(extension.resolve().parent == package, f"_core is {extension}, not the wheel's")
    check(Dispatcher is core.Dispatcher, "domainbus.Dispatcher is not the extension's class")
    print(f"domainbus {domainbus.__version__} from {package}, extension {extension.name}")


def check_dispatch() -> None:
    dispatcher = Dispatcher()
    seen: list[str] = []
    dispatcher.register_handler(UserRegistered, lambda e: seen.append(f"email {e.email}"))
    dispatcher.register_handler(DomainEvent, lambda e: seen.append(f"any {e.user_id}"))
    event = UserRegistered(user_id="u1", email="ada@example.com")
    check(dispatcher.dispatch(event) == 2, "dispatch made 2 handler calls")
    check(seen == ["email ada@example.com", "any u1"], f"dispatch order: {seen}")
    check(event.event_id.version == 7, "event ids are UUIDv7")
    events = [UserRegistered(user_id=f"u{i}", email=f"{i}@example.com") for i in range(1000)]
    seen.clear()
    check(dispatcher.dispatch_batch(events) == 2000, "dispatch_batch made 2000 calls")
    check(seen[:2] == ["email 0@example.com", "any u0"] and len(seen) == 2000, "batch order")
    print("dispatch, dispatch_batch: ok")


def check_queue() -> None:
    dispatcher = Dispatcher()
    got: list[str] = []
    dispatcher.register_handler(UserRegistered, lambda e: got.append(e.user_id))
    events = [UserRegistered(user_id=f"q{i}", email="q@example.com") for i in range(5000)]
    with BatchQueue(dispatcher, capacity=1024, batch_size=128) as queue:
        queue.put(events[0])
        queue.put_many(events[1:])
        queue.join()
        check(queue.dispatched_count == 5000, f"queue dispatched {queue.dispatched_count}")
    check(got == [e.user_id for e in events], "queue dispatched every event once, in order")
    print("BatchQueue: ok")


def check_outbox(folder: Path) -> None:
    database = folder / "app.db"
    codec = EventCodec(UserRegistered)
    dispatcher = Dispatcher()
    delivered: list[UserRegistered] = []
    dispatcher.register_handler(UserRegistered, delivered.append)

    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE users (id TEXT PRIMARY KEY)")
    outbox = SqliteOutbox(connection, codec)
    event = UserRegistered(user_id="u-uow", email="uow@example.com")
    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        uow.record(event)
        connection.execute("INSERT INTO users VALUES (?)", (event.user_id,))
    check(delivered == [event], f"unit of work delivered {delivered}")
    outbox.flush()  # a delivered batch's rows otherwise go with the next commit
    check(outbox.pending() == 0, f"{outbox.pending()} rows left after the unit of work")

    # rows a process wrote and committed before it died, never dispatched
    left = [UserRegistered(user_id=f"left{i}", email="l@example.com") for i in range(3)]
    outbox.begin()
    outbox.append([outbox.encode(e) for e in left], claimed=False)
    outbox.commit()
    connection.close()

    delivered.clear()
    with SqliteOutbox(database, codec) as restarted:
        result = restarted.relay(dispatcher, take_over=True)
        check(result.delivered == 3, f"relay delivered {result.delivered}")
        check(delivered == left, "relayed events equal the ones written (ids included)")
        check(restarted.pending() == 0, "relay left rows behind")
    print("outbox round trip (SqliteOutbox, UnitOfWork, relay): ok")


def main() -> None:
    check_installed()
    check_dispatch()
    check_queue()
    with tempfile.TemporaryDirectory() as folder:
        check_outbox(Path(folder))
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()

"""The article's user-registration service, made real: FastAPI, SQLite, a unit of work, an outbox.

    pip install fastapi uvicorn
    DOMAINBUS_EXAMPLE_DB=users.db uvicorn examples.fastapi_app:app

POST /users registers a user: the `User` aggregate records `UserRegistered`, the unit of work
commits the user row and the event together (the event goes into the outbox in the same
SQLite transaction), then the article's three handlers run: a welcome e-mail (here a row in
`welcome_emails`), an activity log entry and the statistics. A duplicate username is a 400,
as in the article, and rolls everything back. GET /users/{username} and GET /stats show the
result.

Each handler is wrapped in `idempotent(...)`: its row and the record that it ran commit in one
transaction, so an event delivered again (after a crash) changes nothing twice. At start-up
the lifespan relays whatever a previous run committed but did not get to dispatch; it takes
over every claim, which is right for one process (with several workers, run the relay without
`take_over` on a timer instead).

Requests run in FastAPI's thread pool; each opens its own connection (an outbox), and builds a
dispatcher whose handlers write through it.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from domainbus import Dispatcher, DomainEvent
from domainbus.aggregate import AggregateRoot
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox, idempotent
from domainbus.uow import UnitOfWork

# -- the domain --------------------------------------------------------------------------------


class UserRegistered(DomainEvent):
    """A user signed up."""

    user_id: str
    username: str
    email: str


@dataclasses.dataclass
class User(AggregateRoot):
    user_id: str
    username: str
    email: str

    @classmethod
    def register(cls, username: str, email: str) -> User:
        """A new user, with the `UserRegistered` event recorded."""
        user = cls(user_id=str(uuid.uuid4()), username=username, email=email)
        user.record(UserRegistered(user_id=user.user_id, username=username, email=email))
        return user


CODEC = EventCodec(UserRegistered)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users ("
    " user_id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS welcome_emails ("
    " event_id BLOB PRIMARY KEY, user_id TEXT NOT NULL, email TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS activity_log ("
    " id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, action TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS statistics (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

# -- the article's three handlers ----------------------------------------------------------------


def build_dispatcher(outbox: SqliteOutbox, dispatcher_type: Callable[[], Any]) -> Any:
    """A dispatcher whose handlers write through `outbox`'s connection, once per event each."""
    db = outbox.connection

    def send_welcome_email(event: UserRegistered) -> None:
        db.execute(
            "INSERT INTO welcome_emails VALUES (?, ?, ?)",
            (event.event_id.bytes, event.user_id, event.email),
        )

    def log_activity(event: UserRegistered) -> None:
        db.execute(
            "INSERT INTO activity_log (user_id, action, at) VALUES (?, 'registered', ?)",
            (event.user_id, event.occurred_on.isoformat()),
        )

    def update_statistics(event: UserRegistered) -> None:
        db.execute(
            "INSERT INTO statistics VALUES ('users_registered', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1"
        )

    dispatcher = dispatcher_type()
    for handler in (send_welcome_email, log_activity, update_statistics):
        dispatcher.register_handler(
            UserRegistered, idempotent(handler, outbox, key=handler.__name__)
        )
    return dispatcher


# -- the web service ---------------------------------------------------------------------------


class RegisterUser(BaseModel):
    username: str
    email: str


class UserOut(BaseModel):
    user_id: str
    username: str
    email: str


def create_app(
    db_path: str | os.PathLike[str], dispatcher_type: Callable[[], Any] = Dispatcher
) -> FastAPI:
    """The service on the SQLite file `db_path`; `dispatcher_type` picks the backend."""

    def open_outbox() -> SqliteOutbox:
        return SqliteOutbox(db_path, CODEC)  # WAL, busy timeout, synchronous=NORMAL

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with closing(open_outbox()) as outbox:
            for statement in SCHEMA:
                outbox.connection.execute(statement)
            outbox.relay(build_dispatcher(outbox, dispatcher_type), take_over=True)
        yield

    app = FastAPI(title="domainbus user registration", lifespan=lifespan)

    @app.post("/users", status_code=201)
    def register_user(body: RegisterUser) -> UserOut:
        user = User.register(body.username, body.email)
        with open_outbox() as outbox:  # closing it also deletes the delivered outbox rows
            dispatcher = build_dispatcher(outbox, dispatcher_type)
            with UnitOfWork(dispatcher, outbox=outbox) as uow:
                try:
                    outbox.connection.execute(
                        "INSERT INTO users VALUES (?, ?, ?)",
                        (user.user_id, user.username, user.email),
                    )
                except sqlite3.IntegrityError:  # the UNIQUE username: race-free
                    raise HTTPException(400, detail="Username already exists") from None
                uow.track(user)
        return UserOut(user_id=user.user_id, username=user.username, email=user.email)

    @app.get("/users/{username}")
    def get_user(username: str) -> UserOut:
        with open_outbox() as outbox:
            row = outbox.connection.execute(
                "SELECT user_id, username, email FROM users WHERE username = ?", (username,)
            ).fetchone()
        if row is None:
            raise HTTPException(404, detail="No such user")
        return UserOut(user_id=row[0], username=row[1], email=row[2])

    @app.get("/stats")
    def stats() -> dict[str, int]:
        with open_outbox() as outbox:
            db = outbox.connection
            registered = db.execute(
                "SELECT value FROM statistics WHERE name = 'users_registered'"
            ).fetchone()
            return {
                "users": db.execute("SELECT count(*) FROM users").fetchone()[0],
                "users_registered": registered[0] if registered else 0,
                "welcome_emails": db.execute("SELECT count(*) FROM welcome_emails").fetchone()[0],
                "activity_log": db.execute("SELECT count(*) FROM activity_log").fetchone()[0],
                "outbox_pending": outbox.pending(),
            }

    return app


app = create_app(os.environ.get("DOMAINBUS_EXAMPLE_DB", "users.db"))

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)

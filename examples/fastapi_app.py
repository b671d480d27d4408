"""The article's user-registration service, made real: FastAPI, SQLAlchemy, a unit of work, an
outbox, on PostgreSQL or SQLite.

    pip install ".[examples,sqlalchemy,postgres]"
    DATABASE_URL=postgresql+psycopg://user@localhost/app uvicorn examples.fastapi_app:app
    uvicorn examples.fastapi_app:app      # SQLite, in a file in the system's temporary folder

Endpoints (JSON):

- `POST /users` with `{"username": "ada", "email": "ada@example.com"}`: 201 and the user
  (`user_id`, `username`, `email`); 400 `{"detail": "Username already exists"}` for a taken
  username; 422 for a username that is not 1-40 letters, digits, `.`, `_` or `-`, or an email
  that is not `name@domain.tld`.
- `GET /users/{username}`: 200 and the user, or 404.
- `GET /stats`: counts of users, welcome e-mails, activity entries, the statistics row, and the
  outbox rows not yet deleted.

POST /users registers a user: the `User` aggregate (a SQLAlchemy-mapped class) records
`UserRegistered`; the unit of work, on the request's SQLAlchemy session with
`track_session=True`, finds it in the session, commits the user row and the event together (the
event goes into the outbox through the session's own transaction), then the article's three
handlers run: a welcome e-mail (here a row in `welcome_emails`), an activity log entry and the
statistics. A duplicate username is a 400, as in the article, and rolls everything back.

Each handler is wrapped in `idempotent(...)` on the outbox bound to the session: its rows and the
record that it ran commit in one transaction, so an event delivered again (after a crash)
changes nothing twice. At start-up the lifespan relays whatever a previous run committed but did
not get to dispatch (on PostgreSQL the claims of dead processes are free at once; on SQLite, one
process, it takes every claim over), and prunes idempotency records older than
`PROCESSED_RETENTION` (30 days: far longer than any redelivery can take), so that table does not
only grow.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import Engine, Integer, String, create_engine, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from domainbus import Dispatcher, DomainEvent
from domainbus.aggregate import AggregateRoot
from domainbus.codec import EventCodec
from domainbus.outbox import Outbox, SqliteOutbox, idempotent
from domainbus.uow import UnitOfWork

PROCESSED_RETENTION = 30 * 24 * 3600.0  # seconds an idempotency record is kept

# -- the domain --------------------------------------------------------------------------------


class UserRegistered(DomainEvent):
    """A user signed up."""

    user_id: str
    username: str
    email: str


class Base(DeclarativeBase):
    pass


class User(AggregateRoot, Base):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)
    email: Mapped[str] = mapped_column(String(254))

    @classmethod
    def register(cls, username: str, email: str) -> User:
        """A new user, with the `UserRegistered` event recorded."""
        user = cls(user_id=str(uuid.uuid4()), username=username, email=email)
        user.record(UserRegistered(user_id=user.user_id, username=username, email=email))
        return user


class WelcomeEmail(Base):
    __tablename__ = "welcome_emails"
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(36))
    email: Mapped[str] = mapped_column(String(254))


class ActivityLog(Base):
    __tablename__ = "activity_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(36))
    action: Mapped[str] = mapped_column(String(40))
    at: Mapped[str] = mapped_column(String(40))


class Statistic(Base):
    __tablename__ = "statistics"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


CODEC = EventCodec(UserRegistered)

# -- the article's three handlers ----------------------------------------------------------------


def build_dispatcher(
    session: Session, outbox: Outbox, dispatcher_type: Callable[[], Any] = Dispatcher
) -> Any:
    """A dispatcher whose handlers write through `session`, once per event each (`outbox` is
    bound to that session)."""

    def send_welcome_email(event: UserRegistered) -> None:
        session.add(
            WelcomeEmail(event_id=str(event.event_id), user_id=event.user_id, email=event.email)
        )

    def log_activity(event: UserRegistered) -> None:
        at = event.occurred_on.isoformat()
        session.add(ActivityLog(user_id=event.user_id, action="registered", at=at))

    def update_statistics(event: UserRegistered) -> None:
        session.execute(
            text(
                "INSERT INTO statistics (name, value) VALUES ('users_registered', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = statistics.value + 1"
            )
        )

    dispatcher = dispatcher_type()
    for handler in (send_welcome_email, log_activity, update_statistics):
        dispatcher.register_handler(
            UserRegistered, idempotent(handler, outbox, key=handler.__name__)
        )
    return dispatcher


# -- the database --------------------------------------------------------------------------------


def default_database_url() -> str:
    """`DATABASE_URL`, else a SQLite file in the temporary folder (never the working folder)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{os.path.join(tempfile.gettempdir(), 'domainbus-example-users.db')}"


def open_database(url: str) -> tuple[Engine, Outbox]:
    """The engine and the outbox for `url` (postgresql[+psycopg]://... or sqlite:///...)."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = create_engine(url)
    if engine.dialect.name == "postgresql":
        from domainbus.outbox import PostgresOutbox  # psycopg, loaded only for PostgreSQL

        # synchronous_commit=on (the default) on the outbox's connection; the sessions' commits
        # follow the server's setting, on unless changed.
        return engine, PostgresOutbox(url, CODEC)
    if engine.dialect.name != "sqlite" or not engine.url.database:
        raise ValueError(f"DATABASE_URL must name PostgreSQL or a SQLite file, not {url!r}")

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # What SqliteOutbox sets on its own connection, on the sessions' connections too.
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        dbapi_connection.execute("PRAGMA synchronous = NORMAL")
        dbapi_connection.execute("PRAGMA busy_timeout = 5000")

    return engine, SqliteOutbox(engine.url.database, CODEC)


# -- the web service ---------------------------------------------------------------------------

Username = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9._-]{1,40}$")
]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]


class RegisterUser(BaseModel):
    username: Username = Field(description="1-40 letters, digits, '.', '_' or '-'")
    email: Email = Field(description="name@domain.tld")


class UserOut(BaseModel):
    user_id: str
    username: str
    email: str


def create_app(
    database_url: str | None = None, dispatcher_type: Callable[[], Any] = Dispatcher
) -> FastAPI:
    """The service on `database_url` (default: `default_database_url()`); `dispatcher_type`
    picks the backend."""
    url = database_url or default_database_url()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, outbox = open_database(url)
        state.update(engine=engine, outbox=outbox)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            bound = outbox.bind(session)
            dispatcher = build_dispatcher(session, bound, dispatcher_type)
            bound.relay(dispatcher, take_over=isinstance(outbox, SqliteOutbox))
            bound.prune_processed(PROCESSED_RETENTION)
        try:
            yield
        finally:
            outbox.close()
            engine.dispose()

    app = FastAPI(title="domainbus user registration", lifespan=lifespan)

    @app.post("/users", status_code=201)
    def register_user(body: RegisterUser) -> UserOut:
        user = User.register(body.username, body.email)
        with Session(state["engine"]) as session:
            outbox = state["outbox"].bind(session)
            dispatcher = build_dispatcher(session, outbox, dispatcher_type)
            with UnitOfWork(dispatcher, session, outbox=outbox, track_session=True):
                session.add(user)
                try:
                    session.flush()  # the UNIQUE username: race-free
                except IntegrityError:
                    raise HTTPException(400, detail="Username already exists") from None
            return UserOut(user_id=user.user_id, username=user.username, email=user.email)

    @app.get("/users/{username}")
    def get_user(username: str) -> UserOut:
        with Session(state["engine"]) as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise HTTPException(404, detail="No such user")
            return UserOut(user_id=user.user_id, username=user.username, email=user.email)

    @app.get("/stats")
    def stats() -> dict[str, int]:
        with Session(state["engine"]) as session:
            registered = session.get(Statistic, "users_registered")

            def count(model: type[Base]) -> int:
                return session.scalar(select(func.count()).select_from(model)) or 0

            return {
                "users": count(User),
                "users_registered": registered.value if registered else 0,
                "welcome_emails": count(WelcomeEmail),
                "activity_log": count(ActivityLog),
                "outbox_pending": state["outbox"].bind(session).pending(),
            }

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)

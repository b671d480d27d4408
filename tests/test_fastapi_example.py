"""examples/fastapi_app.py through FastAPI's TestClient, on SQLite and on PostgreSQL: registration,
the three handlers' rows, validation, the duplicate-username 400, and the start-up relay after a
crash."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from outbox_support import STORES, Db, make_db

pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (the test extra)")
pytest.importorskip("sqlalchemy", reason="the FastAPI example needs SQLAlchemy")

from fastapi.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pydantic look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path, example: ModuleType) -> Iterator[Db]:
    yield from make_db(request, tmp_path, request.param, example.CODEC)


@pytest.fixture
def url(db: Db) -> str:
    return db.sqlalchemy_url()


@pytest.fixture
def client(example: ModuleType, backend: ModuleType, url: str) -> Iterator[TestClient]:
    with TestClient(example.create_app(url, backend.Dispatcher)) as test_client:
        yield test_client


def register(client: TestClient, username: str, email: str | None = None) -> Any:
    return client.post("/users", json={"username": username, "email": email or f"{username}@x.io"})


def test_register_runs_the_three_handlers(client: TestClient) -> None:
    response = register(client, "ada")
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["username"] == "ada" and user["email"] == "ada@x.io"
    assert client.get("/users/ada").json() == user
    assert client.get("/stats").json() == {
        "users": 1,
        "users_registered": 1,
        "welcome_emails": 1,
        "activity_log": 1,
        "outbox_pending": 1,  # delivered; its row goes with the next commit
    }
    assert register(client, "bob").status_code == 201
    assert client.get("/stats").json()["outbox_pending"] == 1


def test_duplicate_username_is_a_400_and_changes_nothing(client: TestClient) -> None:
    assert register(client, "ada").status_code == 201
    response = register(client, "ada", "other@x.io")
    assert response.status_code == 400
    assert response.json() == {"detail": "Username already exists"}
    stats = client.get("/stats").json()
    assert stats["users"] == stats["users_registered"] == stats["welcome_emails"] == 1
    assert client.get("/users/ada").json()["email"] == "ada@x.io"
    assert client.get("/users/bob").status_code == 404


INVALID = [
    ("", "a@x.io"),
    ("   ", "a@x.io"),
    ("a b", "a@x.io"),
    ("x" * 41, "a@x.io"),
    ("ada", "not-an-email"),
    ("ada", ""),
    ("ada", "a@b"),
    ("ada", "a b@x.io"),
]


def test_invalid_input_is_a_422_and_changes_nothing(client: TestClient) -> None:
    for username, email in INVALID:
        response = client.post("/users", json={"username": username, "email": email})
        assert response.status_code == 422, (username, email, response.text)
    assert client.get("/stats").json()["users"] == 0
    assert register(client, "ada.lovelace_1-x", " ada@example.com ").json()["email"] == (
        "ada@example.com"
    )


def test_startup_relays_what_a_crash_left_behind(
    example: ModuleType, backend: ModuleType, url: str, db: Db
) -> None:
    """An event committed by a process that died before dispatching is delivered at start-up,
    and a second delivery of it changes nothing (the handlers are idempotent)."""
    with TestClient(example.create_app(url, backend.Dispatcher)) as client:
        assert register(client, "ada").status_code == 201
    event = example.UserRegistered(user_id="u-2", username="bob", email="bob@x.io")
    dead = db.open()  # the process that died: its claim outlives it
    dead.begin()
    dead.connection.execute(
        db.sql("INSERT INTO users VALUES (?, ?, ?)"), ("u-2", "bob", "bob@x.io")
    )
    dead.append([example.CODEC.encode(event)])
    dead.append([example.CODEC.encode(event)], claimed=False)  # and a redelivery
    dead.commit()
    dead.close()
    with TestClient(example.create_app(url, backend.Dispatcher)) as client:
        stats = client.get("/stats").json()
    assert stats == {
        "users": 2,
        "users_registered": 2,
        "welcome_emails": 2,
        "activity_log": 2,
        "outbox_pending": 0,
    }


def test_default_database_is_not_in_the_working_folder(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    default = example.default_database_url()
    assert default.startswith("sqlite:///") and str(Path.cwd()) not in default
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    assert example.default_database_url() == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="must name PostgreSQL or a SQLite file"):
        example.open_database("sqlite://")

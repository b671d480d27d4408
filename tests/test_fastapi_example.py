"""examples/fastapi_app.py through FastAPI's TestClient: registration, the three handlers'
rows, the duplicate-username 400, and the start-up relay after a crash."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (the test extra)")

from fastapi.testclient import TestClient

from domainbus.outbox import SqliteOutbox

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pydantic look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "users.db"


@pytest.fixture
def client(example: ModuleType, backend: ModuleType, db_path: Path) -> Iterator[TestClient]:
    with TestClient(example.create_app(db_path, backend.Dispatcher)) as test_client:
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
        "outbox_pending": 0,
    }


def test_duplicate_username_is_a_400_and_changes_nothing(client: TestClient) -> None:
    assert register(client, "ada").status_code == 201
    response = register(client, "ada", "other@x.io")
    assert response.status_code == 400
    assert response.json() == {"detail": "Username already exists"}
    stats = client.get("/stats").json()
    assert stats["users"] == stats["users_registered"] == stats["welcome_emails"] == 1
    assert client.get("/users/ada").json()["email"] == "ada@x.io"
    assert client.get("/users/bob").status_code == 404


def test_startup_relays_what_a_crash_left_behind(
    example: ModuleType, backend: ModuleType, db_path: Path
) -> None:
    """An event committed by a process that died before dispatching is delivered at start-up,
    and a second delivery of it changes nothing (the handlers are idempotent)."""
    app: Callable[..., Any] = example.create_app
    with TestClient(app(db_path, backend.Dispatcher)) as client:
        assert register(client, "ada").status_code == 201
    event = example.UserRegistered(user_id="u-2", username="bob", email="bob@x.io")
    with SqliteOutbox(db_path, example.CODEC) as outbox:
        outbox.begin()  # as the dead process left it: the user row and its claimed event
        outbox.connection.execute("INSERT INTO users VALUES ('u-2', 'bob', 'bob@x.io')")
        outbox.append([example.CODEC.encode(event)])
        outbox.append([example.CODEC.encode(event)], claimed=False)  # and a redelivery
        outbox.commit()
    with TestClient(app(db_path, backend.Dispatcher)) as client:
        stats = client.get("/stats").json()
    assert stats == {
        "users": 2,
        "users_registered": 2,
        "welcome_emails": 2,
        "activity_log": 2,
        "outbox_pending": 0,
    }

"""The README's Python examples run, in order, on both backends."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

import domainbus
from domainbus.outbox import SqliteOutbox

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 2


def test_readme_examples_run(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domainbus, "Dispatcher", backend.Dispatcher)
    monkeypatch.setattr(domainbus, "BatchQueue", backend.BatchQueue)
    module = ModuleType("readme_examples")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), module.__dict__)
    examples = module.__dict__
    # The outbox example: its rows were delivered and deleted, none left leased or dead.
    outbox = examples["outbox"]
    assert isinstance(outbox, SqliteOutbox)
    rows = outbox.connection.execute("SELECT count(*) FROM domainbus_outbox").fetchone()[0]
    assert (rows, outbox.pending(), outbox.dead_letters()) == (0, 0, [])
    assert examples["welcomed"] == ["grace@example.com"]
    # The Quick start's handlers wrote to their own list, not to the outbox.
    assert examples["messages"][:3] == [
        "Welcome, ada <ada@example.com>",
        "registered user-1",
        "stats +1 (UserRegistered)",
    ]
    # The outbox example has a dispatcher of its own: the Quick start's handlers never saw grace.
    assert not any("grace" in message for message in examples["messages"])


def test_readme_claims_about_events_hold() -> None:
    """Item 14: what the README says about events' fields is true."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "frozen, keyword-only" not in text

    class Loose(domainbus.DomainEvent):
        name: str

    class Strict(domainbus.DomainEvent, kw_only=True):
        name: str

    assert Loose("positional").name == "positional"  # the README says this works
    with pytest.raises(TypeError):
        Strict("positional")  # type: ignore[misc]
    with pytest.raises(TypeError):
        Loose("x", uuid.uuid4())  # type: ignore[call-arg]  # event_id is keyword-only
    with pytest.raises(AttributeError):
        Strict(name="x").name = "y"  # type: ignore[misc]  # frozen

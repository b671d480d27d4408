"""The README's Python examples run, in order, on both backends."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

import domainbus

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

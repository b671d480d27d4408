"""Sub-interpreters (issue 10, item 10), on both backends: the pure backend works there with
that interpreter's own exceptions; the Rust extension refuses to import with a clear
ImportError (its classes and exceptions would be the main interpreter's), and `import
domainbus` falls back to the pure backend."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import domainbus

subinterpreters = pytest.importorskip("_xxsubinterpreters")

CODE = """
import json, sys
sys.path.insert(0, {python!r})
result = {{}}
try:
    import domainbus.{name} as backend
except ImportError as exc:
    result["import_error"] = str(exc)
else:
    import domainbus.errors
    q = backend.BatchQueue(backend.Dispatcher())
    q.stop()
    try:
        q.put(object())
    except Exception as exc:
        result["raised_own_class"] = type(exc) is domainbus.errors.QueueClosed
    import domainbus
import domainbus
result["default_backend"] = domainbus.BACKEND
with open({out!r}, "w") as f:
    json.dump(result, f)
"""


def test_backend_in_a_sub_interpreter(backend: ModuleType, tmp_path: Path) -> None:
    name = backend.__name__.rsplit(".", 1)[1]
    out = tmp_path / "result.json"
    python = str(Path(domainbus.__file__).resolve().parents[1])
    interp = subinterpreters.create()
    try:
        code = CODE.format(python=python, name=name, out=str(out))
        subinterpreters.run_string(interp, textwrap.dedent(code))
    finally:
        subinterpreters.destroy(interp)
    result = json.loads(out.read_text())
    assert result["default_backend"] == "pure"
    if name == "pure":
        assert result == {"raised_own_class": True, "default_backend": "pure"}
    else:
        assert "cannot be imported in a sub-interpreter" in result["import_error"]

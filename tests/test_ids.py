"""Event ids under each backend: `DOMAINBUS_BACKEND=pure` uses the Python generator (pure means
pure), and both generators keep ids of one process strictly increasing and reseed after fork."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from domainbus import _ids

PYTHON_DIR = str(Path(_ids.__file__).resolve().parents[1])

GENERATORS: dict[str, Callable[[], uuid.UUID]] = {"python": _ids.py_new_event_id}
try:
    from domainbus._core import new_event_id as _rust_new_event_id
except ImportError:  # pragma: no cover - the extension is always built in CI
    pass
else:
    GENERATORS["rust"] = _rust_new_event_id


def _in_subprocess(code: str, backend: str) -> str:
    env = {**os.environ, "DOMAINBUS_BACKEND": backend, "PYTHONPATH": PYTHON_DIR}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


WHICH = """
import sys
from domainbus import _ids, DomainEvent
print(_ids.new_event_id is _ids.py_new_event_id, _ids.utc_now is _ids.py_utc_now,
      "domainbus._core" in sys.modules, DomainEvent().event_id.version)
"""


def test_pure_backend_uses_the_python_generator_and_never_loads_the_extension() -> None:
    assert _in_subprocess(WHICH, "pure") == "True True False 7"


@pytest.mark.skipif("rust" not in GENERATORS, reason="the Rust extension is not built")
def test_default_backend_uses_the_rust_generator() -> None:
    assert _in_subprocess(WHICH, "") == "False False True 7"


@pytest.mark.parametrize("name", list(GENERATORS))
def test_ids_of_one_process_strictly_increase(name: str) -> None:
    generate = GENERATORS[name]
    ids = [generate() for _ in range(20_000)]  # many per millisecond: the counter orders them
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))


FORKED = """
import json, os, sys
from domainbus import _ids
generate = {generate}
generate()  # the generator is seeded before the fork
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    os.write(write, json.dumps([generate().int & (2**62 - 1) for _ in range(8)]).encode())
    os._exit(0)
os.close(write)
parent = [generate().int & (2**62 - 1) for _ in range(8)]
with os.fdopen(read) as pipe:
    child = json.loads(pipe.read())
os.waitpid(pid, 0)
print(json.dumps([parent, child]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("name", "backend", "generate"),
    [
        ("python", "pure", "_ids.new_event_id"),
        ("rust", "", "_ids.new_event_id"),
    ],
)
def test_a_forked_child_does_not_repeat_the_parents_random_bits(
    name: str, backend: str, generate: str
) -> None:
    if name not in GENERATORS:
        pytest.skip("the Rust extension is not built")
    parent, child = json.loads(_in_subprocess(FORKED.format(generate=generate), backend))
    assert len(set(parent)) == 8 and len(set(child)) == 8
    assert not set(parent) & set(child)  # 62 random bits each: equal only if not reseeded

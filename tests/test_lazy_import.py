"""`import domainbus` loads only what dispatching needs (PEP 562 for the rest): no sqlite3,
asyncio, codec, outbox or database and broker clients until they are used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = [
    "asyncio",
    "sqlite3",
    "domainbus.codec",
    "domainbus.outbox",
    "domainbus.uow",
    "domainbus.eventstore",
    "domainbus.redis",
    "redis",
    "psycopg",
    "sqlalchemy",
]


def _loaded_after(code: str, backend: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env_code = f"import os; os.environ['DOMAINBUS_BACKEND'] = {backend!r}\n{probe}"
    out = subprocess.run(
        [sys.executable, "-c", env_code], check=True, capture_output=True, text=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("backend", ["pure", "rust"])
def test_import_domainbus_loads_nothing_heavy(backend: str) -> None:
    loaded = _loaded_after("import domainbus\nd = domainbus.Dispatcher()", backend)
    assert sorted(set(HEAVY) & loaded) == []


@pytest.mark.parametrize("backend", ["pure", "rust"])
def test_lazy_names_load_when_used(backend: str) -> None:
    loaded = _loaded_after(
        "import domainbus\nassert domainbus.UnitOfWork.__name__ == 'UnitOfWork'\n"
        "assert callable(domainbus.idempotent)\nassert domainbus.pure.Dispatcher",
        backend,
    )
    assert {"domainbus.uow", "domainbus.outbox", "sqlite3"} <= loaded


def test_unknown_name_is_an_attribute_error() -> None:
    import domainbus

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        domainbus.nothing_here  # noqa: B018

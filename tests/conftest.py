"""Every behavioural test runs on both backends: request the `backend` fixture (a module with
the backend's public classes) or `make_dispatcher` (a factory for its Dispatcher)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

BACKENDS = ("pure", "rust")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    """`domainbus.pure` or `domainbus.rust` (ImportError: the extension is not built)."""
    return importlib.import_module(f"domainbus.{request.param}")


@pytest.fixture
def make_dispatcher(backend: ModuleType) -> Callable[..., Any]:
    """`backend.Dispatcher`, called with the test's options."""
    return backend.Dispatcher  # type: ignore[no-any-return]


# Real Redis and PostgreSQL servers (tests/servers.py), for the tests that need one.
from servers import (  # noqa: E402, F401
    postgres_dsn,
    postgres_server,
    redis_server,
    start_redis,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` stress tests run in CI (CI=true) or when asked for (`-m slow`); elsewhere the
    default run stays a few minutes and says what it skipped."""
    import os

    if os.environ.get("CI", "").lower() == "true" or config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="slow stress test: runs under CI=true or with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

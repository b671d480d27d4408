"""The version has one home, Cargo.toml: pyproject.toml leaves it to maturin (`dynamic`), and
`domainbus.__version__`, the extension's `__version__` and the installed metadata agree."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import domainbus

ROOT = Path(__file__).resolve().parents[1]


def _cargo_version() -> str:
    version: str = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    return version


def test_pyproject_takes_the_version_from_cargo() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]


def test_the_package_reports_the_cargo_version() -> None:
    assert domainbus.__version__ == _cargo_version()


def test_the_extension_reports_the_same_version() -> None:
    core = pytest.importorskip("domainbus._core")
    assert core.__version__ == _cargo_version()


def test_an_installed_distribution_has_the_same_version() -> None:
    try:
        installed = importlib.metadata.version("domainbus")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("domainbus is not installed (running from the source tree only)")
    assert installed == _cargo_version()


def test_the_version_is_read_when_first_asked_for() -> None:
    code = (
        "import sys, domainbus\n"
        "print('importlib.metadata' in sys.modules or 'tomllib' in sys.modules)\n"
        "print(domainbus.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "python"), "PATH": ""},
    ).stdout.split()
    assert out == ["False", _cargo_version()]

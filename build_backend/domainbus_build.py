"""The PEP 517 build backend of domainbus: maturin's, stopping clearly when Rust is missing.

Building domainbus from source (the sdist, a git checkout, `pip install -e .`) compiles the Rust
extension, so it needs `cargo`. maturin's own backend, when it finds no `cargo` on PATH, quietly
downloads a Rust toolchain into a temporary directory (the `puccinialin` package) and compiles
there: a few hundred megabytes and minutes of build nobody asked for, and a long log when it
fails. This wrapper stops instead, before anything is downloaded, with one message saying what to
install. With `cargo` on PATH every hook is maturin's, unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import maturin

MESSAGE = """
domainbus: building from source needs Rust, and no `cargo` was found on PATH.

  Either install a prebuilt wheel, which needs no Rust:
      pip install --only-binary=domainbus domainbus
  (wheels: CPython 3.11-3.14 on Linux x86_64 and aarch64 with glibc >= 2.17, macOS, Windows)

  or install Rust >= 1.83 (https://rustup.rs, or your system's package manager), make sure
  `cargo` is on PATH (rustup puts it in ~/.cargo/bin), and run pip again.
"""


def _require_cargo() -> None:
    """Exit with MESSAGE when no `cargo` is on PATH (what maturin would otherwise download)."""
    if shutil.which("cargo") is None and not os.environ.get("DOMAINBUS_ALLOW_RUST_DOWNLOAD"):
        sys.stderr.write(MESSAGE)
        sys.stderr.flush()
        raise SystemExit(1)


def get_requires_for_build_wheel(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    _require_cargo()
    return list(maturin.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    _require_cargo()
    return list(maturin.get_requires_for_build_editable(config_settings))


def get_requires_for_build_sdist(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    _require_cargo()
    return list(maturin.get_requires_for_build_sdist(config_settings))


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    _require_cargo()
    return str(maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings))


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _require_cargo()
    return str(maturin.build_wheel(wheel_directory, config_settings, metadata_directory))


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _require_cargo()
    return str(maturin.build_editable(wheel_directory, config_settings, metadata_directory))


def build_sdist(sdist_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    _require_cargo()
    return str(maturin.build_sdist(sdist_directory, config_settings))

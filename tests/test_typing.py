"""The public API's types as a user's type checker sees them (the stubs of the Rust extension
included): mypy, strict, over tests/typing/examples.py, every `reveal_type` compared with the
`# R:` comment on its line (in the manner of msgspec's tests/typing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "tests" / "typing" / "examples.py"
REVEALED = re.compile(r"^[^:]+:(\d+): note: Revealed type is \"(.*)\"$")


def _expected() -> dict[int, str]:
    lines = EXAMPLES.read_text().splitlines()
    return {
        number: line.split("# R:", 1)[1].strip()
        for number, line in enumerate(lines, start=1)
        if line.lstrip().startswith("reveal_type(") and "# R:" in line
    }


def _normalise(revealed: str) -> str:
    return revealed.replace("builtins.", "")  # mypy 1.x spells builtins out, 2.x does not


def test_the_public_api_types_as_documented() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--python-version",
            "3.11",
            str(EXAMPLES),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT / "python")},
        timeout=600,
    )
    revealed: dict[int, str] = {}
    errors = []
    for line in done.stdout.splitlines():
        match = REVEALED.match(line)
        if match:
            revealed[int(match[1])] = _normalise(match[2])
        elif ": error:" in line:
            errors.append(line)
    assert errors == [], "\n".join(errors)
    expected = _expected()
    assert len(expected) >= 20  # the file is read as meant: every example has its comment
    assert revealed == expected

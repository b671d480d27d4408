"""The contract has one home: `domainbus.rust`'s classes show `domainbus.pure`'s docstrings.

Class docstrings are taken from the pure classes (python/domainbus/rust.py) and include the
numbered rules of their module. Method docstrings of the extension come from its Rust doc
comments (a builtin method's `__doc__` cannot be set from Python; `execute`'s is the `ml_doc` of
its METH_O definition in rust/commands.rs); every one is compared with the pure one as `help()`
shows it (`inspect.cleandoc`), so a pure docstring changed alone fails here.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from domainbus import pure

rust = pytest.importorskip("domainbus.rust")

CLASSES = ["Dispatcher", "BatchQueue"]


def _public(name: str) -> list[str]:
    twin = getattr(pure, name)
    return sorted(n for n in vars(twin) if not n.startswith("_")) + (
        sorted(n for n in vars(pure.commands.Commands) if not n.startswith("_"))
        if name == "Dispatcher"
        else []
    )


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


@pytest.mark.parametrize("name", CLASSES)
def test_the_class_docstring_is_the_pure_one_with_its_rules(name: str) -> None:
    rust_class, pure_class = getattr(rust, name), getattr(pure, name)
    assert rust_class.__doc__ == pure_class.__doc__
    assert inspect.getdoc(rust_class) == inspect.getdoc(pure_class)
    assert "\n1. " in inspect.getdoc(rust_class)  # help() shows the numbered rules
    module_doc = sys.modules[pure_class.__module__].__doc__ or ""
    rules = module_doc[module_doc.index("\n1. ") :].splitlines()
    assert len(rules) > 5
    assert all(line.strip() in rust_class.__doc__ for line in rules)  # every rule, to the last


@pytest.mark.parametrize(
    ("name", "method"), [(name, method) for name in CLASSES for method in _public(name)]
)
def test_a_public_method_has_the_pure_docstring(name: str, method: str) -> None:
    rust_class, pure_class = getattr(rust, name), getattr(pure, name)
    assert hasattr(rust_class, method), f"rust {name} has no {method}"
    assert _doc(getattr(rust_class, method)) == _doc(getattr(pure_class, method))


def test_the_rust_backend_does_not_import_pure_for_its_docstrings() -> None:
    code = (
        "import sys, domainbus.rust as r\n"
        "print('domainbus.pure' in sys.modules)\n"
        "print('Rules' in r.Dispatcher.__doc__, 'domainbus.pure' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == ["False", "True", "True"]

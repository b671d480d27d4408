"""A pure class's `__doc__` with its module's numbered rules appended, so `help()` on the class
(and on the Rust class, which takes this text) shows the whole contract from its one home."""

from __future__ import annotations

__all__ = ["with_rules"]


def with_rules(class_doc: str | None, module_doc: str | None) -> str:
    """`class_doc`, then the module docstring's rules (from its line "1. " on), indented as the
    class docstring's body is, so `inspect.cleandoc` keeps them aligned."""
    lines = (module_doc or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("1. ")), len(lines))
    rules = [f"    {line}" if line else "" for line in lines[start:]]
    head = (class_doc or "").rstrip()
    if not rules:
        return head
    return "\n".join([head, "", "    Rules (numbered as in the README):", "", *rules]) + "\n    "

"""Every error message the Rust backend writes is written in the Python package too.

The parity tests compare messages at run time, call by call; this compares the sources: each
message template in rust/ (the literal of a `new_err(...)` or `format!(...)`, placeholders as
`{}`) must match a string of python/domainbus (its f-strings likewise, implicitly concatenated
pieces joined), so a message changed on one side alone fails here even when no test provokes
it. RUST_ONLY are the messages with no pure twin: CPython's own wording that the hand-written
fastcall entries and the awaitable copy, and internal errors.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITERAL = r'"((?:[^"\\]|\\.)*)"'
RUST_ONLY = {
    # CPython's argument errors, as `dispatch` (a METH_FASTCALL entry) must word them
    "dispatch() got an unexpected keyword argument '{}'",
    "dispatch() got multiple values for argument 'event'",
    "dispatch() missing 1 required positional argument: 'event'",
    "dispatch() takes 1 positional argument but {} were given",
    # CPython's await protocol errors (rust/async_fast_path.rs is a hand-written coroutine)
    "__await__() returned a coroutine",
    "__await__() returned non-iterator of type '{}'",
    "cannot reuse already awaited coroutine",
    "object {} can't be used in 'await' expression",
    # internal: a panic caught at the FFI boundary, broken invariants, the OS
    "domainbus: dispatch panicked",
    "no OS randomness: {}",
    "the nested dispatch queue is gone",
    "type cache lost its entry",
    # internal to domainbus.redis.partitions: its own key_bytes and checked partition count
    "key_bytes must return bytes",
    "partitions must be >= 1",
}


def _template(text: str) -> str:
    return re.sub(r"\{[^{}]*\}", "{}", text)


def _rust_messages() -> set[str]:
    found = set()
    for path in (ROOT / "rust").rglob("*.rs"):
        source = path.read_text().split("#[cfg(test)]")[0]  # not the unit tests' own
        call = r"(?:new_err|format!)\(\s*(?:format!\(\s*)?" + LITERAL
        found.update(_template(m[1]) for m in re.finditer(call, source))
    return found


def _python_strings() -> str:
    strings = []
    for path in (ROOT / "python" / "domainbus").rglob("*.py"):
        for run in re.finditer(r'(?:f?"(?:[^"\\\n]|\\.)*"\s*)+', path.read_text()):
            pieces = re.findall(r'f?"((?:[^"\\\n]|\\.)*)"', run[0])
            strings.append(_template("".join(pieces)))
    return "\n".join(strings)


def test_every_rust_message_is_also_written_in_python() -> None:
    strings = _python_strings()
    rust = _rust_messages()
    assert len(rust) > 30  # the extraction still finds them
    missing = []
    for message in sorted(rust - RUST_ONLY):
        pattern = r"[^\n]*".join(re.escape(piece) for piece in message.split("{}"))
        if not re.search(pattern, strings):
            missing.append(message)
    assert missing == [], "Rust messages with no Python twin"


def test_the_rust_only_list_is_not_stale() -> None:
    assert RUST_ONLY <= _rust_messages()

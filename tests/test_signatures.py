"""Both backends have the same signatures, as `inspect.signature` and IDEs see them, and the
same argument errors.

Signatures are compared by parameter names, kinds and defaults (the pure ones also carry
annotations, which a Rust text signature has not), methods bound to an instance. Argument
errors: an unknown keyword and a missing argument give the same message on both backends. Too
many positional arguments gives the same TypeError, but the counts differ: CPython counts
`self`, PyO3 does not ("takes 3 positional arguments but 4 were given" against "takes 2 ... but
3"), so those are compared with the counts shifted by one. PyO3 names a constructor `__new__`
where Python says `__init__`. `dispatch` and `execute` (hand-written METH_FASTCALL / METH_O
entries) word their argument errors as CPython does for builtins and are not compared.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from domainbus import pure

rust = pytest.importorskip("domainbus.rust")

CLASSES = ["Dispatcher", "BatchQueue"]


def _public(name: str) -> list[str]:
    classes = [getattr(pure, name)] + ([pure.commands.Commands] if name == "Dispatcher" else [])
    return sorted(
        n
        for cls in classes
        for n, member in vars(cls).items()
        if not n.startswith("_") and callable(member)
    )


def _shape(signature: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize("name", CLASSES)
def test_the_constructor_signature_is_the_pure_one(name: str) -> None:
    rust_sig = inspect.signature(getattr(rust, name))
    assert _shape(rust_sig) == _shape(inspect.signature(getattr(pure, name)))
    assert "**" not in str(rust_sig)


@pytest.mark.parametrize(
    ("name", "method"), [(name, method) for name in CLASSES for method in _public(name)]
)
def test_a_public_method_has_the_pure_signature(name: str, method: str) -> None:
    # bound, as a user calls them: a Rust `$self` is positional-only, a Python `self` is not
    rust_sig = inspect.signature(
        getattr(getattr(rust, name), method).__get__(_instance(rust, name))
    )
    pure_sig = inspect.signature(
        getattr(getattr(pure, name), method).__get__(_instance(pure, name))
    )
    assert _shape(rust_sig) == _shape(pure_sig)


def _instance(backend: Any, name: str) -> Any:
    d = backend.Dispatcher()
    return d if name == "Dispatcher" else backend.BatchQueue(d)


class Evt:
    pass


def _message(call: Callable[[], object]) -> str:
    with pytest.raises(TypeError) as info:
        call()
    return str(info.value).replace("__new__()", "__init__()")


def _calls(backend: Any) -> dict[str, Callable[[], object]]:
    d = backend.Dispatcher()
    q = backend.BatchQueue(d)
    return {
        "init keyword": lambda: backend.Dispatcher(on_eror="raise"),
        "register keyword": lambda: d.register_handler(Evt, print, prio=1),
        "handler keyword": lambda: d.handler(Evt, onec=True),
        "unregister missing": lambda: d.unregister_handler(Evt),
        "register missing": lambda: d.register_handler(Evt),
        "dispatch_async keyword": lambda: d.dispatch_async(Evt(), concurent=True),
        "queue keyword": lambda: backend.BatchQueue(d, capcity=1),
        "queue missing": lambda: backend.BatchQueue(),
        "put keyword": lambda: q.put(Evt(), blok=False),
        "put missing": lambda: q.put(),
        "stop keyword": lambda: q.stop(drian=True),
    }


ARITY = {
    "init": lambda b: b.Dispatcher("raise"),
    "register": lambda b: b.Dispatcher().register_handler(Evt, print, 0),
    "handler": lambda b: b.Dispatcher().handler(Evt, 0),
    "queue": lambda b: b.BatchQueue(b.Dispatcher(), 16),
    "put": lambda b: b.BatchQueue(b.Dispatcher()).put(Evt(), False),
    "stop": lambda b: b.BatchQueue(b.Dispatcher()).stop(True),
}


def test_unknown_keyword_and_missing_argument_messages_are_the_same() -> None:
    pure_calls, rust_calls = _calls(pure), _calls(rust)
    for what, call in pure_calls.items():
        assert _message(rust_calls[what]) == _message(call), what


@pytest.mark.parametrize("what", sorted(ARITY))
def test_too_many_positional_arguments_is_the_same_error_counted_without_self(what: str) -> None:
    pattern = r"(.*) takes (\d+) positional arguments? but (\d+) (?:was|were) given"
    pure_match = re.fullmatch(pattern, _message(lambda: ARITY[what](pure)))
    rust_match = re.fullmatch(pattern, _message(lambda: ARITY[what](rust)))
    assert pure_match and rust_match
    assert rust_match[1] == pure_match[1]
    assert int(rust_match[2]) == int(pure_match[2]) - 1
    assert int(rust_match[3]) == int(pure_match[3]) - 1

"""The Rust backend: `domainbus._core`'s classes under their public names.

Importing this module raises ImportError when the extension is not built. The classes'
docstrings are the pure twins' (the contract has one home, `domainbus.pure`): `help()` and
`inspect.getdoc` read them from there when first asked, so importing this module does not
import the pure backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Coroutine

from domainbus._core import AsyncDispatch, BatchQueue, Dispatcher

__all__ = ["BatchQueue", "Dispatcher"]

# The hand-written coroutine of `dispatch_async` is a Coroutine for asyncio (`asyncio.run`,
# `create_task`) and for isinstance checks.
Coroutine.register(AsyncDispatch)


class _PureDoc:
    """A class's `__doc__` that is its `domainbus.pure` twin's, read when first asked for.

    A heap type's `__doc__` may be a descriptor (`type.__doc__` calls its `__get__`), so the
    text comes from the one source without importing it at `import domainbus` time.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._text: str | None = None

    def __get__(self, instance: object, owner: type | None = None) -> str | None:
        if self._text is None:
            twin = getattr(importlib.import_module("domainbus.pure"), self._name)
            self._text = twin.__doc__
        return self._text


for _cls in (Dispatcher, BatchQueue):
    # Method docstrings cannot be set from Python (a builtin method's `__doc__` is read-only):
    # they come from the Rust doc comments, which tests/test_docstrings.py compares with pure.
    try:
        _cls.__doc__ = _PureDoc(_cls.__name__)  # type: ignore[assignment]
    except (AttributeError, TypeError):  # an immutable type (a build that sets the flag)
        pass

"""The Rust backend: `domainbus._core`'s classes under their public names.

Importing this module raises ImportError when the extension is not built.
"""

from collections.abc import Coroutine

from domainbus._core import AsyncDispatch, BatchQueue, Dispatcher

# The hand-written coroutine of `dispatch_async` is a Coroutine for asyncio (`asyncio.run`,
# `create_task`) and for isinstance checks.
Coroutine.register(AsyncDispatch)

__all__ = ["BatchQueue", "Dispatcher"]

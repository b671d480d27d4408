"""The Rust backend: `domainbus._core`'s classes under their public names.

Importing this module raises ImportError when the extension is not built.
"""

from domainbus._core import BatchQueue, Dispatcher

__all__ = ["BatchQueue", "Dispatcher"]

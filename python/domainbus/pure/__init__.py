"""The pure-Python backend: readable reference implementations, the specification in code.

`domainbus.rust` must behave exactly like the classes exported here.
"""

from domainbus.pure.dispatcher import Dispatcher
from domainbus.pure.queue import BatchQueue

__all__ = ["BatchQueue", "Dispatcher"]

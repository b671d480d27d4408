"""Event ids and timestamps: the Rust versions when the extension loads, Python twins otherwise.

`DOMAINBUS_BACKEND=pure` means pure here too: the Python twins are used even when the extension
would import (the same rules; the Rust backend is never loaded by this module then).

`new_event_id()` returns a UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then a 12-bit counter
that keeps ids from one process strictly increasing within a millisecond, then 62 random bits.
`utc_now()` returns the current time as a timezone-aware UTC datetime.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime

__all__ = ["new_event_id", "py_new_event_id", "py_utc_now", "utc_now"]

_lock = threading.Lock()
_last_stamp = 0  # unix_ms << 12 | counter of the last id, as in the Rust version
_rng = random.Random(os.urandom(16))


def _reseed_after_fork() -> None:
    global _rng
    _rng = random.Random(os.urandom(16))


os.register_at_fork(after_in_child=_reseed_after_fork)


def py_new_event_id() -> uuid.UUID:
    """Pure-Python UUIDv7 with the same layout and ordering guarantee as the Rust one."""
    global _last_stamp
    with _lock:
        now = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 12
        # a full 12-bit counter carries into the millisecond, as RFC 9562 allows
        _last_stamp = now if now > _last_stamp else _last_stamp + 1
        stamp = _last_stamp
        rand_b = _rng.getrandbits(62)
    value = (stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def py_utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _pure_wanted() -> bool:
    """`DOMAINBUS_BACKEND` names the pure backend (read as `domainbus` reads it)."""
    return os.environ.get("DOMAINBUS_BACKEND", "").strip().lower() == "pure"


if _pure_wanted():
    new_event_id = py_new_event_id
    utc_now = py_utc_now
else:
    try:
        from domainbus._core import _after_fork, new_event_id, utc_now
    except ImportError:  # the extension is not built: fall back to the Python twins
        new_event_id = py_new_event_id
        utc_now = py_utc_now
    else:
        os.register_at_fork(after_in_child=_after_fork)

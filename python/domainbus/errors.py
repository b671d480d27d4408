"""Exceptions of domainbus, shared by both backends (the Rust extension raises these too)."""

from __future__ import annotations

__all__ = ["BackendError", "ConcurrencyError", "DecodeError", "DomainbusError", "QueueClosed"]


class DomainbusError(Exception):
    """Base class of the errors domainbus raises itself (handler errors propagate unchanged)."""


class BackendError(DomainbusError, ImportError):
    """`DOMAINBUS_BACKEND` names no backend that can be used (a bad value, or "rust" without
    the extension). Raised when `domainbus.Dispatcher`, `BatchQueue` or `BACKEND` is first
    used, so the message is one clear line; `domainbus.pure` and `domainbus.rust` still import.
    """


class QueueClosed(DomainbusError):
    """`put` on a `BatchQueue` that was stopped: the event was not accepted."""


class DecodeError(DomainbusError):
    """An event record or stream could not be decoded; nothing was dispatched from that record.

    The decoders raise this and nothing else, whatever the bytes. `reason` is one of
    "truncated", "garbage", "unknown-tag", "invalid-field" or "upcast-failed". `offset` is the
    byte offset of the bad record (msgpack streams), `line` its 1-based line number (JSON
    lines), `index` its position among the stream's events (what `--start-at` counts),
    `source` the file it came from. `count` is how many events the bad record holds (1 for one
    bad event; all the events of a damaged msgpack frame), and `resume_at` the `start_at` that
    reads on past it (`index + count`), or None when nothing after it can be read (the stream
    ends inside it, or a corrupt frame length hides where the next frame starts). Each is None
    when it does not apply or is unknown.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        offset: int | None = None,
        line: int | None = None,
        index: int | None = None,
        source: str | None = None,
        count: int | None = None,
        resume_at: int | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.offset = offset
        self.line = line
        self.index = index
        self.source = source
        self.count = count
        self.resume_at = resume_at
        super().__init__(reason, detail)  # args that rebuild it (pickle restores the rest)

    def __str__(self) -> str:
        where = [self.source] if self.source else []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        if self.index is not None:
            where.append(f"event {self.index}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.reason}: {self.detail}"


class ConcurrencyError(DomainbusError):
    """An append to an event stream whose version is not the one the writer expected.

    Another writer appended first (optimistic concurrency); nothing of this append was written.
    `stream_id`, `expected` and `actual` say which stream and which versions.
    """

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(stream_id, expected, actual)

    def __str__(self) -> str:
        return (
            f"stream {self.stream_id!r} is at version {self.actual}, "
            f"not the expected {self.expected}: another writer appended first"
        )

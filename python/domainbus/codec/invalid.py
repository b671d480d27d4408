"""Bad records: the `DecodeError`s the decoders raise, and how a reader reports them.

Record-level decoders raise `DecodeError` without a position; the stream readers, which know
where the record was, re-raise it `located` at its offset, line and index (or hand it to the
caller's `on_invalid` callback and go on).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from domainbus.errors import DecodeError

__all__ = ["OnInvalid", "located", "malformed", "report", "too_deep"]

OnInvalid = Callable[[DecodeError, bytes], object] | None


def malformed(exc: msgspec.DecodeError) -> DecodeError:
    """A DecodeError for bytes msgspec could not parse at all."""
    reason = "truncated" if "truncated" in str(exc) else "garbage"
    return DecodeError(reason, str(exc))


def too_deep() -> DecodeError:
    """A DecodeError for a record nested deeper than the interpreter's recursion limit."""
    return DecodeError("garbage", "the record is nested too deeply to be an event")


def located(
    error: DecodeError,
    *,
    offset: int | None = None,
    line: int | None = None,
    index: int | None = None,
    source: str | None = None,
    count: int | None = None,
    resume_at: int | None = None,
) -> DecodeError:
    """`error` (raised by a record decoder, without a position) placed in its stream."""
    return DecodeError(
        error.reason,
        error.detail,
        offset=offset,
        line=line,
        index=index,
        source=source,
        count=count,
        resume_at=resume_at,
    )


def report(error: DecodeError, raw: bytes, on_invalid: OnInvalid) -> None:
    """Raise `error`, or hand it with the record's bytes to `on_invalid` and go on."""
    if on_invalid is None:
        raise error
    on_invalid(error, raw)

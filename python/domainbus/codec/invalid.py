"""`InvalidRecord`: why one record failed to decode, before the reader knows where it was."""

from __future__ import annotations

from typing import Any

import msgspec

from domainbus.errors import DecodeError

__all__ = ["InvalidRecord", "malformed"]


class InvalidRecord(Exception):
    """One record could not be decoded; the stream readers add its position (internal)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def at(self, **where: Any) -> DecodeError:
        """The public error, located at `where` (offset, line, index, source)."""
        return DecodeError(self.reason, self.detail, **where)


def malformed(exc: msgspec.DecodeError) -> InvalidRecord:
    """An InvalidRecord for bytes msgspec could not parse at all."""
    reason = "truncated" if "truncated" in str(exc) else "garbage"
    return InvalidRecord(reason, str(exc))

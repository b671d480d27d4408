"""The JSON lines stream format: one event object per line, UTF-8, blank lines ignored.

Events are counted from 0 over the non-blank lines (what `start_at` counts): one position per
line, everywhere. Errors name the 1-based line number. A chunk of lines is decoded with one
msgspec `decode_lines` call, accepted only if it gives exactly one event per non-blank line;
any other chunk (a bad or old-version record, two values on one line, a value spread over two
lines) is decoded again line by line, so a line decodes the same whatever its neighbours.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import BinaryIO

from domainbus.codec.frames import Chunk, Position
from domainbus.codec.invalid import OnInvalid, located, report
from domainbus.codec.records import Records
from domainbus.errors import DecodeError

__all__ = ["read_lines"]


def read_lines(
    records: Records,
    file: BinaryIO,
    *,
    chunk_lines: int = 1024,
    start_at: int = 0,
    on_invalid: OnInvalid = None,
    source: str | None = None,
    position: Position | None = None,
) -> Iterator[Chunk]:
    """Decode the lines of `file` into chunks of consecutive events."""
    where = Position() if position is None else position
    line_number = 0
    while where.index < start_at:
        line = file.readline()
        if not line:
            return
        line_number += 1
        where.index += not line.isspace()
    while lines := list(islice(file, chunk_lines)):
        index = where.index
        filled = sum(not line.isspace() for line in lines)
        events = records.json_lines(b"".join(lines), filled)
        if events is None:
            yield from _decode_slowly(records, lines, line_number, index, on_invalid, source)
        elif events:
            yield index, events
        where.index = index + filled
        line_number += len(lines)


def _decode_slowly(
    records: Records,
    lines: list[bytes],
    line_number: int,
    index: int,
    on_invalid: OnInvalid,
    source: str | None,
) -> Iterator[Chunk]:
    """Line by line: upcast old versions, report bad lines with their number."""
    first, run = index, []
    for number, line in enumerate(lines, line_number + 1):
        if line.isspace():
            continue
        try:
            run.append(records.json_record(line))
        except DecodeError as error:
            if run:
                yield first, run
            bad = located(
                error, line=number, index=index, source=source, count=1, resume_at=index + 1
            )
            first, run = index + 1, []
            report(bad, line, on_invalid)
        index += 1
    if run:
        yield first, run

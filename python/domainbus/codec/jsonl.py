"""The JSON lines stream format: one event object per line, UTF-8, blank lines ignored.

Events are counted from 0 over the non-blank lines (what `start_at` counts); errors name the
1-based line number. A chunk of lines is decoded with one msgspec `decode_lines` call; only a
chunk holding a bad or old-version record is decoded again line by line.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from domainbus.codec.frames import Chunk, OnInvalid, report
from domainbus.codec.invalid import InvalidRecord

if TYPE_CHECKING:
    from domainbus.codec.event_codec import EventCodec

__all__ = ["read_lines"]


def read_lines(
    codec: EventCodec,
    file: BinaryIO,
    *,
    chunk_lines: int = 1024,
    start_at: int = 0,
    on_invalid: OnInvalid = None,
    source: str | None = None,
) -> Iterator[Chunk]:
    """Decode the lines of `file` into chunks of consecutive events."""
    line_number, index = 0, 0
    while index < start_at:
        line = file.readline()
        if not line:
            return
        line_number += 1
        index += not line.isspace()
    decode_lines = codec._json_decoder.decode_lines
    while lines := list(islice(file, chunk_lines)):
        try:
            events = decode_lines(b"".join(lines))
        except msgspec.MsgspecError:
            yield from _decode_slowly(codec, lines, line_number, index, on_invalid, source)
            index += sum(not line.isspace() for line in lines)
        else:
            if events:
                yield index, events
            index += len(events)
        line_number += len(lines)


def _decode_slowly(
    codec: EventCodec,
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
            run.append(codec.decode_json_record(line))
        except InvalidRecord as invalid:
            if run:
                yield first, run
            error = invalid.at(line=number, index=index, source=source)
            first, run = index + 1, []
            report(error, line, on_invalid)
        index += 1
    if run:
        yield first, run

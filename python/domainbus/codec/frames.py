"""The msgpack stream format: a header, then length-prefixed frames of events.

    stream := MAGIC frame*
    MAGIC  := the 20 bytes b"domainbus msgpack 1\\n"
    frame  := length payload
    length := 4 bytes, unsigned little-endian: the payload's size in bytes
    payload:= one msgpack array of events (each a map carrying its tag)

A reader holds one frame at a time (writers use 1,024 events a frame by default), and decodes a
whole frame with one msgspec call into a list ready for `dispatch_batch`. Events are counted
across the stream from 0; the count of a frame is read from its array header, so skipping to an
event (`start_at`) does not decode the frames before it. A frame whose payload is not a msgpack
array counts as one (invalid) record.

Damage, and how far a reader gets past it (`DecodeError.count` and `.resume_at`):

- a bad event inside a readable frame: that event only (resume at the next one);
- a frame whose payload is corrupt: every event its array header declares (resume after it);
- a frame cut off by the end of the file: the end of the stream (nothing to resume);
- a length prefix larger than `MAX_FRAME_BYTES`: the next frame's start is unknown, so the rest
  of the file cannot be read.

A reader never allocates more than the bytes actually in the file, whatever a prefix declares.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import msgspec

from domainbus.codec.invalid import OnInvalid, located, report
from domainbus.codec.records import Records
from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

__all__ = [
    "MAGIC",
    "MAX_FRAME_BYTES",
    "Chunk",
    "Position",
    "count_frame_events",
    "read_frames",
    "write_frame",
]

MAGIC = b"domainbus msgpack 1\n"
MAX_FRAME_BYTES = 1 << 30  # a larger length prefix is taken for garbage
_LENGTH = struct.Struct("<I")
_READ_STEP = 1 << 20  # a large frame is read in steps, so a lying prefix costs no memory

Chunk = tuple[int, list[DomainEvent]]  # (stream index of the first event, contiguous events)


class Position:
    """How far a reader has counted: `index` is the stream index of the next record."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = 0


def array_header(payload: bytes) -> tuple[int, int] | None:
    """`(element count, header size)` of a msgpack array, or None if it is not one."""
    if not payload:
        return None
    first = payload[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and len(payload) >= 3:
        return int.from_bytes(payload[1:3], "big"), 3
    if first == 0xDD and len(payload) >= 5:
        return int.from_bytes(payload[1:5], "big"), 5
    return None


def write_frame(file: BinaryIO, encoder: msgspec.msgpack.Encoder, events: Sequence[object]) -> None:
    """Append one frame holding `events` (already type-checked by the codec)."""
    buffer = bytearray(_LENGTH.size)
    encoder.encode_into(events, buffer, _LENGTH.size)
    _LENGTH.pack_into(buffer, 0, len(buffer) - _LENGTH.size)
    file.write(buffer)


def read_up_to(file: BinaryIO, size: int) -> bytes:
    """`size` bytes, or fewer at the end of the file; memory grows only with what is read."""
    if size <= _READ_STEP:
        return file.read(size)
    there = _bytes_left(file)
    if there is not None and there < size:
        return file.read(max(there, 0))  # a file on disk: what it holds, not what was declared
    parts = []
    left = size
    while left and (part := file.read(min(left, _READ_STEP))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _bytes_left(file: BinaryIO) -> int | None:
    """Bytes between the position and the end of a regular file; None for other streams."""
    try:
        return os.fstat(file.fileno()).st_size - file.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def read_frames(
    records: Records,
    file: BinaryIO,
    *,
    start_at: int = 0,
    on_invalid: OnInvalid = None,
    source: str | None = None,
    position: Position | None = None,
) -> Iterator[Chunk]:
    """Decode the frames of `file` (positioned at the start, MAGIC included) into chunks."""
    where = Position() if position is None else position
    head = file.read(len(MAGIC))
    if head != MAGIC:
        raise DecodeError(
            "garbage", "not a domainbus msgpack stream (missing header)", offset=0, source=source
        )
    offset = len(MAGIC)
    while prefix := file.read(_LENGTH.size):
        index = where.index
        size = _LENGTH.unpack(prefix)[0] if len(prefix) == _LENGTH.size else -1
        if size > MAX_FRAME_BYTES:
            rest = read_up_to(file, MAX_FRAME_BYTES) if on_invalid is not None else b""
            detail = (
                f"frame length {size:,} exceeds {MAX_FRAME_BYTES:,} bytes: a corrupt length "
                "prefix; where the next frame starts is unknown, so the rest of the file "
                "cannot be read"
            )
            error = DecodeError("garbage", detail, offset=offset, index=index, source=source)
            report(error, prefix + rest, on_invalid)
            return
        payload = read_up_to(file, size) if size >= 0 else b""
        header = array_header(payload)
        count = 1 if header is None else header[0]
        if len(payload) != size:
            declared = f"declaring {count:,} event(s), " if header is not None else ""
            detail = (
                "the file ends inside a frame's length prefix"
                if size < 0
                else f"the file is cut off inside a frame ({declared}{len(payload):,} of its "
                f"{size:,} bytes are there)"
            )
            error = DecodeError(
                "truncated",
                detail,
                offset=offset,
                index=index,
                source=source,
                count=count if header is not None else None,
            )
            report(error, prefix + payload, on_invalid)
            return
        where.index = index + count
        if index + count > start_at:
            skip = max(0, start_at - index)
            events = records.msgpack_list(payload)
            if events is None:
                yield from _decode_slowly(records, payload, offset, index, skip, on_invalid, source)
            else:
                yield index + skip, events[skip:] if skip else events
        offset += _LENGTH.size + size


def count_frame_events(file: BinaryIO) -> int | None:
    """Events in a msgpack stream, from its frame headers (seeking past payloads); None if
    `file` is not a seekable msgpack stream. Reads from the current position, MAGIC first."""
    if file.read(len(MAGIC)) != MAGIC or not file.seekable():
        return None
    total = 0
    while len(prefix := file.read(_LENGTH.size)) == _LENGTH.size:
        size = _LENGTH.unpack(prefix)[0]
        header = array_header(file.read(min(size, 5)))
        total += 1 if header is None else header[0]
        file.seek(size - min(size, 5), 1)
    return total


def _decode_slowly(
    records: Records,
    payload: bytes,
    offset: int,
    index: int,
    skip: int,
    on_invalid: OnInvalid,
    source: str | None,
) -> Iterator[Chunk]:
    """Record by record: upcast old versions, report bad records with their exact offset."""
    header = array_header(payload)
    count = 1 if header is None else header[0]
    try:
        split = records.split_msgpack_array(payload)
    except DecodeError as error:
        # the frame was read whole, so data ending early inside it is corrupt, not cut off
        lost = f"; the frame's {count:,} event(s) are lost" if count > 1 else ""
        damaged = DecodeError(
            "garbage",
            f"damaged frame: {error.detail}{lost}",
            offset=offset,
            index=index,
            source=source,
            count=count,
            resume_at=index + count,
        )
        report(damaged, payload, on_invalid)
        return
    position = offset + _LENGTH.size + (header[1] if header is not None else 0)
    first, run = index + skip, []
    for i, record in enumerate(split):
        size = len(record)
        if i >= skip:
            try:
                run.append(records.msgpack_record(record))
            except DecodeError as error:
                if run:
                    yield first, run
                first, run = index + i + 1, []
                at = index + i
                bad = located(
                    error, offset=position, index=at, source=source, count=1, resume_at=at + 1
                )
                report(bad, bytes(record), on_invalid)
        position += size
    if run:
        yield first, run

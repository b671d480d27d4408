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
array counts as one (invalid) record. A length prefix cannot be resynchronised: a truncated or
oversized frame ends the stream (reported once, with the remaining bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from domainbus.codec.invalid import InvalidRecord
from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

if TYPE_CHECKING:
    from domainbus.codec.event_codec import EventCodec

__all__ = [
    "MAGIC",
    "MAX_FRAME_BYTES",
    "Chunk",
    "OnInvalid",
    "count_frame_events",
    "read_frames",
    "write_frame",
]

MAGIC = b"domainbus msgpack 1\n"
MAX_FRAME_BYTES = 1 << 30  # a larger length prefix is taken for garbage
_LENGTH = struct.Struct("<I")

Chunk = tuple[int, list[DomainEvent]]  # (stream index of the first event, contiguous events)
OnInvalid = Callable[[DecodeError, bytes], object] | None


def report(error: DecodeError, raw: bytes, on_invalid: OnInvalid) -> None:
    """Raise `error`, or hand it with the record's bytes to `on_invalid` and go on."""
    if on_invalid is None:
        raise error
    on_invalid(error, raw)


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


def read_frames(
    codec: EventCodec,
    file: BinaryIO,
    *,
    start_at: int = 0,
    on_invalid: OnInvalid = None,
    source: str | None = None,
) -> Iterator[Chunk]:
    """Decode the frames of `file` (positioned at the start, MAGIC included) into chunks."""
    head = file.read(len(MAGIC))
    if head != MAGIC:
        raise DecodeError(
            "garbage", "not a domainbus msgpack stream (missing header)", offset=0, source=source
        )
    decode_frame = codec._msgpack_batch_decoder.decode
    offset, index = len(MAGIC), 0
    while prefix := file.read(_LENGTH.size):
        size = _LENGTH.unpack(prefix)[0] if len(prefix) == _LENGTH.size else -1
        payload = file.read(size) if 0 <= size <= MAX_FRAME_BYTES else b""
        if len(payload) != size:
            raw = prefix + payload + file.read()
            error = DecodeError(
                "truncated" if size <= MAX_FRAME_BYTES else "garbage",
                _bad_frame_detail(size, len(raw) - len(prefix)),
                offset=offset,
                index=index,
                source=source,
            )
            report(error, raw, on_invalid)
            return
        header = array_header(payload)
        count = 1 if header is None else header[0]
        if index + count > start_at:
            skip = max(0, start_at - index)
            try:
                events = decode_frame(payload)
            except msgspec.MsgspecError:
                yield from _decode_slowly(codec, payload, offset, index, skip, on_invalid, source)
            else:
                yield index + skip, events[skip:] if skip else events
        offset += _LENGTH.size + size
        index += count


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


def _bad_frame_detail(size: int, available: int) -> str:
    if size < 0:
        return "the stream ends inside a frame's length prefix"
    if size > MAX_FRAME_BYTES:
        return f"frame length {size} exceeds {MAX_FRAME_BYTES} bytes: corrupt length prefix"
    return f"frame of {size} bytes is cut off after {available} bytes"


def _decode_slowly(
    codec: EventCodec,
    payload: bytes,
    offset: int,
    index: int,
    skip: int,
    on_invalid: OnInvalid,
    source: str | None,
) -> Iterator[Chunk]:
    """Record by record: upcast old versions, report bad records with their exact offset."""
    try:
        records = codec.split_msgpack_array(payload)
    except InvalidRecord as invalid:
        # the frame was read whole, so data ending early inside it is corrupt, not cut off
        error = DecodeError("garbage", invalid.detail, offset=offset, index=index, source=source)
        report(error, payload, on_invalid)
        return
    position = offset + _LENGTH.size + array_header(payload)[1]  # type: ignore[index]
    first, run = index + skip, []
    for i, record in enumerate(records):
        size = len(record)
        if i >= skip:
            try:
                run.append(codec.decode_msgpack_record(record))
            except InvalidRecord as invalid:
                if run:
                    yield first, run
                first, run = index + i + 1, []
                error = invalid.at(offset=position, index=index + i, source=source)
                report(error, bytes(record), on_invalid)
        position += size
    if run:
        yield first, run

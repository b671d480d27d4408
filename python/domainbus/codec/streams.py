"""Reading and writing event streams: format detection, batching, writers, dead letters.

Two formats: "msgpack" (see `domainbus.codec.frames`) and "jsonl" (see `domainbus.codec.jsonl`).
Reading detects the format from the msgpack header, else takes JSON lines.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NamedTuple

import msgspec

from domainbus.codec.frames import MAGIC, Chunk, OnInvalid, read_frames, write_frame
from domainbus.codec.jsonl import read_lines
from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

if TYPE_CHECKING:
    from domainbus.codec.event_codec import EventCodec

__all__ = [
    "FORMATS",
    "Batch",
    "DeadLetterFile",
    "Format",
    "StreamWriter",
    "check_format",
    "iter_indexed_batches",
]

Format = Literal["msgpack", "jsonl"]
FORMATS: tuple[Format, ...] = ("msgpack", "jsonl")
Source = str | os.PathLike[str] | BinaryIO


class Batch(NamedTuple):
    """Consecutive events of a stream; `start` is the stream index of the first one."""

    start: int
    events: list[DomainEvent]


def check_format(format: str | None) -> Format | None:
    """`format` if it is a known stream format (or None, meaning detect); else ValueError."""
    if format is None or format in FORMATS:
        return format
    raise ValueError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")


def format_for_path(path: Source, format: str | None) -> Format:
    """The format to write `path` in: the one given, else "jsonl" for .jsonl/.ndjson names."""
    checked = check_format(format)
    if checked is not None:
        return checked
    if isinstance(path, str | os.PathLike) and Path(path).suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "msgpack"


def iter_indexed_batches(
    codec: EventCodec,
    source: Source,
    batch_size: int = 1024,
    format: str | None = None,
    *,
    start_at: int = 0,
    on_invalid: OnInvalid = None,
) -> Iterator[Batch]:
    """Batches of up to `batch_size` consecutive events from the `start_at`-th one on.

    A batch never spans an invalid record, so `start + i` is always the stream index of
    `events[i]`. Bad records raise DecodeError, or go to `on_invalid(error, raw_bytes)`.
    Arguments are checked (and a path opened) at once, not at the first `next()`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
    if not isinstance(start_at, int) or start_at < 0:
        raise ValueError(f"start_at must be a non-negative int, not {start_at!r}")
    checked = check_format(format)
    if isinstance(source, str | os.PathLike):
        file: BinaryIO = open(source, "rb")
        return _read(codec, file, os.fspath(source), batch_size, checked, start_at, on_invalid)
    name = getattr(source, "name", None)
    name = name if isinstance(name, str) else None
    return _read(codec, source, name, batch_size, checked, start_at, on_invalid, owned=False)


def _read(
    codec: EventCodec,
    file: BinaryIO,
    name: str | None,
    batch_size: int,
    format: Format | None,
    start_at: int,
    on_invalid: OnInvalid,
    *,
    owned: bool = True,
) -> Iterator[Batch]:
    try:
        kind = format or _detect(file)
        options: dict[str, Any] = {"start_at": start_at, "on_invalid": on_invalid, "source": name}
        if kind == "msgpack":
            chunks = read_frames(codec, file, **options)
        else:
            chunks = read_lines(codec, file, chunk_lines=batch_size, **options)
        yield from _rebatch(chunks, batch_size)
    finally:
        if owned:
            file.close()


def _detect(file: BinaryIO) -> Format:
    """Peek at the stream: the msgpack header, else JSON lines."""
    peek = getattr(file, "peek", None)
    if peek is not None:
        head = peek(len(MAGIC))[: len(MAGIC)]
    elif file.seekable():
        position = file.tell()
        head = file.read(len(MAGIC))
        file.seek(position)
    else:
        raise ValueError("cannot detect the format of an unseekable stream: pass format=")
    return "msgpack" if head == MAGIC else "jsonl"


def _rebatch(chunks: Iterator[Chunk], batch_size: int) -> Iterator[Batch]:
    """Regroup contiguous chunks into batches of `batch_size` (fewer at gaps and at the end).

    When reading fails, the events read before the bad record are still yielded first, so
    a DecodeError at index N means every event before N was delivered.
    """
    pending: list[DomainEvent] = []
    start = 0
    try:
        for index, events in chunks:
            if pending and index != start + len(pending):
                yield Batch(start, pending)
                pending = []
            if not pending and len(events) == batch_size:
                yield Batch(index, events)
                continue
            if not pending:
                start = index
            buffer = pending + events if pending else events
            taken = 0
            while len(buffer) - taken >= batch_size:
                yield Batch(start, buffer[taken : taken + batch_size])
                taken += batch_size
                start += batch_size
            pending = buffer[taken:]
    except DecodeError:
        if pending:
            yield Batch(start, pending)
        raise
    if pending:
        yield Batch(start, pending)


class StreamWriter:
    """Writes events to a stream in frames (msgpack) or lines (jsonl); a context manager.

    `target` is a path (created or truncated, closed by `close()`) or a binary file (left
    open). Events are buffered into frames of `batch_size`; `close()` flushes the rest.
    """

    def __init__(
        self,
        codec: EventCodec,
        target: Source,
        format: str | None = "msgpack",
        batch_size: int = 1024,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        self.format: Format = format_for_path(target, format)
        self.count = 0
        self._codec = codec
        self._batch_size = batch_size
        self._pending: list[DomainEvent] = []
        self._owned = isinstance(target, str | os.PathLike)
        if isinstance(target, str | os.PathLike):
            self._file: BinaryIO = open(target, "wb")
        else:
            self._file = target
        if self.format == "msgpack":
            self._file.write(MAGIC)

    def write(self, events: Iterable[DomainEvent]) -> int:
        """Append events; returns how many were written by this call."""
        iterator = iter(events)
        written = 0
        while chunk := list(islice(iterator, self._batch_size - len(self._pending))):
            self._pending.extend(chunk)
            written += len(chunk)
            if len(self._pending) == self._batch_size:
                self.flush()
        return written

    def flush(self) -> None:
        """Write the buffered events as one frame (or their lines)."""
        events, self._pending = self._pending, []
        if not events:
            return
        self._codec._check_types(events)
        if self.format == "msgpack":
            write_frame(self._file, self._codec._msgpack_encoder, events)
        else:
            self._file.write(self._codec._json_encoder.encode_lines(events))
        self.count += len(events)

    def close(self) -> None:
        """Flush, then close the file if this writer opened it."""
        try:
            self.flush()
        finally:
            if self._owned:
                self._file.close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DeadLetterFile:
    """An `on_invalid` callback appending each bad record to a JSON lines file.

    Each line: reason, detail, source, index, offset, line, and the record's bytes as
    `raw_base64`. The file is created at the first bad record; `count` says how many.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._file: BinaryIO | None = None
        self._encoder = msgspec.json.Encoder()

    def __call__(self, error: DecodeError, raw: bytes) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")
        record = {
            "reason": error.reason,
            "detail": error.detail,
            "source": error.source,
            "index": error.index,
            "offset": error.offset,
            "line": error.line,
            "raw_base64": base64.b64encode(raw).decode("ascii"),
        }
        self._file.write(self._encoder.encode(record) + b"\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""Reading and writing event streams: format detection, batching, writers, dead letters.

Two formats: "msgpack" (see `domainbus.codec.frames`) and "jsonl" (see `domainbus.codec.jsonl`).
Reading detects the format from the first bytes (`detect_format`): the msgpack header, or a
JSON object; anything else is a DecodeError saying what the file is not.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Generator, Iterable, Iterator
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, NamedTuple

import msgspec

from domainbus.codec.frames import MAGIC, Chunk, Position, read_frames, write_frame
from domainbus.codec.invalid import OnInvalid
from domainbus.codec.jsonl import read_lines
from domainbus.codec.records import Records
from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

__all__ = [
    "FORMATS",
    "Batch",
    "BatchReader",
    "DeadLetterFile",
    "Format",
    "StreamWriter",
    "check_format",
    "detect_format",
    "format_for_path",
    "iter_indexed_batches",
]

Format = Literal["msgpack", "jsonl"]
FORMATS: tuple[Format, ...] = ("msgpack", "jsonl")
Source = str | os.PathLike[str] | BinaryIO
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MSGPACK_SUFFIXES = (".bin", ".msgpack", ".mpk", ".mp", ".dbus")


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
    """The format to write `path` in: the one given, else "jsonl" for .jsonl/.ndjson names,
    ValueError for a .json name (JSON lines or not?), else "msgpack"."""
    checked = check_format(format)
    if checked is not None:
        return checked
    suffix = Path(path).suffix.lower() if isinstance(path, str | os.PathLike) else ""
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".json":
        raise ValueError(
            f"{str(path)!r}: a .json name does not say which stream format to write; "
            "pass format='jsonl' (JSON lines) or format='msgpack', or name it .jsonl"
        )
    return "msgpack"


def iter_indexed_batches(
    records: Records,
    source: Source,
    batch_size: int = 1024,
    format: str | None = None,
    *,
    start_at: int = 0,
    on_invalid: OnInvalid = None,
) -> BatchReader:
    """Batches of up to `batch_size` consecutive events from the `start_at`-th one on.

    A batch never spans an invalid record, so `start + i` is always the stream index of
    `events[i]`. Bad records raise DecodeError, or go to `on_invalid(error, raw_bytes)`.
    Arguments are checked (and a path opened) at once, not at the first `next()`.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
    if not isinstance(start_at, int) or isinstance(start_at, bool) or start_at < 0:
        raise ValueError(f"start_at must be a non-negative int, not {start_at!r}")
    checked = check_format(format)
    if isinstance(source, str | os.PathLike):
        file: BinaryIO = open(source, "rb")
        return BatchReader(
            records, file, os.fspath(source), batch_size, checked, start_at, on_invalid
        )
    found = getattr(source, "name", None)
    return BatchReader(
        records,
        source,
        found if isinstance(found, str) else None,
        batch_size,
        checked,
        start_at,
        on_invalid,
        owned=False,
    )


class BatchReader(Iterator[Batch]):
    """The batches of one stream, in order (what `EventCodec.iter_indexed_batches` returns).

    When it opened the file itself (a path was given), the file is closed when the batches
    run out, on `close()`, on leaving a `with` block, or when the reader is collected, even
    if it was never started. `position` is the stream index of the next record: once the
    batches ran out, the number of events in the stream (skipped and invalid ones included).
    """

    def __init__(
        self,
        records: Records,
        file: BinaryIO,
        name: str | None,
        batch_size: int,
        format: Format | None,
        start_at: int,
        on_invalid: OnInvalid,
        *,
        owned: bool = True,
    ) -> None:
        self._file = file
        self._owned = owned
        self._position = Position()
        # a module-level generator, not a method: no reference cycle, so dropping the last
        # reference to the reader closes its file at once, even if it was never started
        self._batches = _read(
            records, file, name, batch_size, format, start_at, on_invalid, self._position
        )

    @property
    def position(self) -> int:
        return self._position.index

    def __iter__(self) -> BatchReader:
        return self

    def __next__(self) -> Batch:
        try:
            return next(self._batches)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading; close the file if this reader opened it."""
        self._batches.close()
        if self._owned:
            self._file.close()

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._owned and not self._file.closed:
            self._file.close()


def _read(
    records: Records,
    file: BinaryIO,
    name: str | None,
    batch_size: int,
    format: Format | None,
    start_at: int,
    on_invalid: OnInvalid,
    position: Position,
) -> Generator[Batch, None, None]:
    kind = format or detect_format(file, name)
    options: dict[str, Any] = {
        "start_at": start_at,
        "on_invalid": on_invalid,
        "source": name,
        "position": position,
    }
    if kind == "msgpack":
        chunks = read_frames(records, file, **options)
    else:
        chunks = read_lines(records, file, chunk_lines=batch_size, **options)
    yield from _rebatch(chunks, batch_size)


_PEEK = 64


def detect_format(file: BinaryIO, source: str | None = None) -> Format:
    """The stream's format from its first bytes: the msgpack header, or JSON lines (a JSON
    object first, or nothing at all); else DecodeError saying what the file is not."""
    peek = getattr(file, "peek", None)
    if peek is not None:
        head = peek(_PEEK)[:_PEEK]
    elif file.seekable():
        position = file.tell()
        head = file.read(_PEEK)
        file.seek(position)
    else:
        raise ValueError("cannot detect the format of an unseekable stream: pass format=")
    if head.startswith(MAGIC):
        return "msgpack"
    text = head.lstrip(b" \t\r\n")
    if not text or text.startswith(b"{"):
        return "jsonl"
    if MAGIC.startswith(head):
        detail = (
            f"the file is {len(head)} byte(s) long, shorter than the {len(MAGIC)}-byte header "
            "of a domainbus msgpack stream"
        )
        raise DecodeError("truncated", detail, offset=0, source=source)
    if head.startswith(b"domainbus "):
        line = head.split(b"\n")[0]
        raise DecodeError(
            "garbage",
            f"unsupported stream header {line!r} (expected {MAGIC!r})",
            offset=0,
            source=source,
        )
    raise DecodeError(
        "garbage",
        "not an event stream: it starts with neither the domainbus msgpack header nor a JSON "
        f"object (first bytes: {head[:16]!r})",
        offset=0,
        source=source,
    )


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
        records: Records,
        target: Source,
        format: str | None = "msgpack",
        batch_size: int = 1024,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        self.format: Format = format_for_path(target, format)
        self.count = 0
        self._records = records
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
        self._records.check_types(events)
        if self.format == "msgpack":
            write_frame(self._file, self._records.msgpack_encoder, events)
        else:
            self._file.write(self._records.json_lines_bytes(events))
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

    Each line: reason, detail, source, index, offset, line, count, and the record's bytes as
    `raw_base64`. The file is created at the first bad record. `count` says how many records
    were written, `events` how many events they held (a damaged frame holds many), and
    `stopped` is the error that ended the stream early, if one did (a file cut off inside a
    frame, a corrupt frame length): what came after it could not be read at all.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self.events = 0
        self.stopped: DecodeError | None = None
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
            "count": error.count,
            "raw_base64": base64.b64encode(raw).decode("ascii"),
        }
        self._file.write(self._encoder.encode(record) + b"\n")
        self._file.flush()
        self.count += 1
        self.events += error.count or 0
        if error.resume_at is None:
            self.stopped = error

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

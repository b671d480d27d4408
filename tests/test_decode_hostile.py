"""Hostile input for the decoders: DecodeError and nothing else, in bounded memory.

Every decode path is tried: `decode`, `decode_batch`, `decode_json`, the stream readers with
and without `on_invalid`. Issue 11 items 2-5 and 7 (library side); the CLI side is in
tests/test_cli_input.py.
"""

from __future__ import annotations

import ast
import gc
import io
import os
import struct
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from domainbus import DomainEvent
from domainbus.codec import MAGIC, DeadLetterFile, EventCodec, detect_format
from domainbus.errors import DecodeError


class Ping(DomainEvent, kw_only=True):
    n: int


codec = EventCodec(Ping)


def ping(n: int) -> Ping:
    return Ping(n=n)


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def msgpack_stream(*payloads: bytes) -> bytes:
    return MAGIC + b"".join(frame(p) for p in payloads)


def read_all(data: bytes, **options: Any) -> list[int]:
    return [e.n for b in codec.iter_batches(io.BytesIO(data), **options) for e in b]  # type: ignore[attr-defined]


def decode_paths(record_msgpack: bytes, record_json: bytes) -> list[Callable[[], object]]:
    """Every way one hostile record can reach a decoder."""
    bad_frame = msgpack_stream(codec.encode_batch([ping(0)]), b"\x92" + record_msgpack + b"\xc0")
    lines = codec.encode_json(ping(0)) + b"\n" + record_json + b"\n"
    collected: list[DecodeError] = []
    return [
        lambda: codec.decode(record_msgpack),
        lambda: codec.decode_batch(b"\x91" + record_msgpack),
        lambda: codec.decode_json(record_json),
        lambda: read_all(bad_frame),
        lambda: read_all(lines),
        lambda: read_all(bad_frame, on_invalid=lambda e, raw: collected.append(e)) and collected,
        lambda: read_all(lines, on_invalid=lambda e, raw: collected.append(e)) and collected,
    ]


def only_decode_errors(calls: list[Callable[[], object]]) -> None:
    for call in calls:
        try:
            result = call()
        except DecodeError:
            continue
        # on_invalid paths return the errors they collected instead of raising
        assert isinstance(result, list) and all(isinstance(e, DecodeError) for e in result)


# -- item 2: records nested ~1,000 deep -------------------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting_is_a_decode_error_on_every_path(depth: int) -> None:
    deep_msgpack = msgspec.msgpack.encode({"type": "Ping", "n": 1})[:-1]  # replace the value
    deep_msgpack = deep_msgpack + b"\x91" * depth + b"\x01"
    deep_json = b'{"type":"Ping","n":' + b"[" * depth + b"]" * depth + b"}"
    only_decode_errors(decode_paths(b"\x91" * depth + b"\x01", b"[" * depth + b"]" * depth))
    only_decode_errors(decode_paths(deep_msgpack, deep_json))
    with pytest.raises(DecodeError, match="nested too deeply"):
        codec.decode(b"\x91" * depth + b"\x01")


def test_deep_nesting_in_an_old_version_record() -> None:
    class Pong(DomainEvent, kw_only=True, tag="Pong.v2"):
        n: int

    versioned = EventCodec(Pong)
    versioned.upcaster("Pong", from_version=1)(lambda fields: fields)
    deep = b'{"type":"Pong","n":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(DecodeError):
        versioned.decode_json(deep)


# -- item 3: a tag with thousands of digits ---------------------------------------------------


def test_a_huge_version_number_is_an_unknown_tag() -> None:
    tag = "X.v" + "9" * 5000
    record = msgspec.msgpack.encode({"type": tag, "n": 1})
    json_record = msgspec.json.encode({"type": tag, "n": 1})
    only_decode_errors(decode_paths(record, json_record))
    with pytest.raises(DecodeError, match=r"unknown event tag 'X\.v999") as info:
        codec.decode(record)
    assert info.value.reason == "unknown-tag"
    assert len(str(info.value)) < 300  # the tag is cut short in the message


def test_a_huge_integer_tag_is_an_unknown_tag() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode_json(b'{"type":' + b"9" * 5000 + b',"n":1}')
    assert info.value.reason in ("unknown-tag", "garbage", "invalid-field")


# -- item 4: a frame header that lies about its size ------------------------------------------


@pytest.mark.parametrize("declared", [2**32 - 1, (1 << 30) + 1, 1 << 30, 50_000_000])
def test_a_lying_frame_length_allocates_nothing(declared: int, tmp_path: Path) -> None:
    data = MAGIC + struct.pack("<I", declared) + b"\x91\x80\x00\x01\x02\x03"  # 30 bytes
    assert len(data) == 30
    path = tmp_path / "lying.bin"
    path.write_bytes(data)  # a real file: its read(n) reserves n bytes up front
    for options in ({}, {"on_invalid": lambda error, raw: None}):
        tracemalloc.start()
        try:
            with pytest.raises(DecodeError) if not options else _nothing():
                for _ in codec.iter_batches(path, **options):
                    pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 << 10, f"{peak:,} bytes allocated for a 30-byte file"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_corrupt_length_ends_the_stream_and_says_why() -> None:
    good = frame(codec.encode_batch([ping(1)]))
    data = MAGIC + good + struct.pack("<I", (1 << 30) + 1) + good
    with pytest.raises(DecodeError) as info:
        read_all(data)
    error = info.value
    assert (error.reason, error.index, error.count, error.resume_at) == ("garbage", 1, None, None)
    assert "corrupt length prefix" in error.detail
    assert "the rest of the file cannot be read" in error.detail
    assert read_all(data, on_invalid=lambda e, raw: None) == [1]


def test_a_cut_off_frame_says_so(tmp_path: Path) -> None:
    whole = msgpack_stream(codec.encode_batch([ping(i) for i in range(3)]))
    cut = whole[:-5]
    with pytest.raises(DecodeError) as info:
        read_all(cut)
    error = info.value
    assert error.reason == "truncated"
    assert "the file is cut off inside a frame (declaring 3 event(s)" in error.detail
    assert (error.index, error.count, error.resume_at) == (0, 3, None)


# -- item 5: one position per JSON line -------------------------------------------------------


def two_values_on_line_2() -> bytes:
    one, two, three, four = (codec.encode_json(ping(n)) for n in range(4))
    return one + b"\n" + two + b" " + three + b"\n" + four + b"\n"


def test_two_values_on_one_line_are_one_bad_line() -> None:
    data = two_values_on_line_2()
    with pytest.raises(DecodeError) as info:
        read_all(data)
    assert (info.value.line, info.value.index) == (2, 1)
    bad: list[DecodeError] = []
    assert read_all(data, on_invalid=lambda e, raw: bad.append(e)) == [0, 3]
    assert [(e.line, e.index) for e in bad] == [(2, 1)]


def test_start_at_counts_lines_like_the_errors_do() -> None:
    data = two_values_on_line_2()
    skip = lambda e, raw: None  # noqa: E731
    assert read_all(data, start_at=2, on_invalid=skip) == [3]  # line 3 is event 2
    assert read_all(data, start_at=1, on_invalid=skip) == [3]


def test_a_line_decodes_the_same_whatever_its_neighbours() -> None:
    one_value_two_lines = b'{"type":"Ping",\n"n":5}\n'
    good = codec.encode_json(ping(1)) + b"\n"
    for data in (one_value_two_lines, good + one_value_two_lines, one_value_two_lines + good):
        bad: list[DecodeError] = []
        read_all(data, on_invalid=lambda e, raw, bad=bad: bad.append(e))
        assert len(bad) == 2, data  # each half is its own bad line, wherever it sits


# -- item 7: format detection by header -------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "reason", "message"),
    [
        (os.urandom(0) + b"\x00\xff\x10garbage\x81", "garbage", "not an event stream"),
        (MAGIC[:7], "truncated", "shorter than the 20-byte header"),
        (b"domainbus msgpack 9\n" + b"\x00" * 8, "garbage", "unsupported stream header"),
        (b"PK\x03\x04zipfile", "garbage", "neither the domainbus msgpack header nor a JSON object"),
    ],
)
def test_detection_says_what_the_file_is_not(head: bytes, reason: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        read_all(head)
    assert info.value.reason == reason


def test_detection_of_the_real_formats() -> None:
    assert detect_format(io.BufferedReader(io.BytesIO(MAGIC))) == "msgpack"
    assert detect_format(io.BufferedReader(io.BytesIO(b'  \n{"type"'))) == "jsonl"
    assert detect_format(io.BufferedReader(io.BytesIO(b""))) == "jsonl"  # empty: no events


def test_random_bytes_are_never_json_line_1() -> None:
    for seed in range(20):
        data = bytes((seed * 37 + i * 101) % 256 for i in range(64))
        if data.lstrip(b" \t\r\n").startswith(b"{"):
            continue
        with pytest.raises(DecodeError, match=r"not an event stream|header"):
            read_all(data)


# -- dead letters count events, not records ---------------------------------------------------


def test_a_damaged_frame_counts_all_its_events(tmp_path: Path) -> None:
    good = codec.encode_batch([ping(i) for i in range(3)])
    damaged = b"\xdc\x04\x00" + b"\xc1" * 40  # declares 1,024 events, then garbage
    data = msgpack_stream(good, damaged, codec.encode_batch([ping(9)]))
    letters = DeadLetterFile(tmp_path / "bad.jsonl")
    assert read_all(data, on_invalid=letters) == [0, 1, 2, 9]
    letters.close()
    assert (letters.count, letters.events, letters.stopped) == (1, 1024, None)
    with pytest.raises(DecodeError) as info:
        read_all(data)
    assert (info.value.index, info.value.count, info.value.resume_at) == (3, 1024, 1027)
    assert read_all(data, start_at=info.value.resume_at) == [9]  # the hint gets past it
    with pytest.raises(DecodeError) as inside:
        read_all(data, start_at=5)  # starting inside the damaged frame
    assert inside.value.resume_at == 1027


# -- issue 12: file handles and the import graph ----------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_iterator_never_started_leaks_no_file(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    codec.write(path, [ping(1)])
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            batches = codec.iter_batches(path)
            reader = codec.iter_indexed_batches(path)
            del batches, reader
            assert open_fds() == before  # closed at once, not at the next collection
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    with codec.iter_indexed_batches(path) as reader:
        assert [e.n for e in next(reader).events] == [1]  # type: ignore[attr-defined]
    assert open_fds() == before


def test_readers_sit_below_event_codec() -> None:
    package = Path(__file__).parent.parent / "python" / "domainbus" / "codec"
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("domainbus.codec."):
                    imported.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = imported
    for reader in ("records", "frames", "jsonl", "streams", "invalid", "versions"):
        assert "event_codec" not in graph[reader], reader

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import cycle: {' -> '.join((*trail, name))}"
        for child in graph.get(name, ()):
            visit(child, (*trail, name))

    for name in graph:
        visit(name, ())

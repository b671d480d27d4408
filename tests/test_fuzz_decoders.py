"""Fuzzing the decoders: whatever the bytes, only DecodeError comes out (issue 11).

Hypothesis runs by default (a few seconds: `DOMAINBUS_FUZZ_EXAMPLES` raises the count);
atheris, where it is installed, runs `tests/decoder_fuzz_support.py` for
`DOMAINBUS_FUZZ_RUNS` inputs (default 2,000) in a subprocess.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoder_fuzz_support import CODEC, Ordered, Registered, exercise

EXAMPLES = int(os.environ.get("DOMAINBUS_FUZZ_EXAMPLES", "100"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

tags = st.sampled_from(["Registered", "Registered.v1", "Registered.v2", "Registered.v3", "Ordered"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=6) | tags, children, max_size=3)
    ),
    max_leaves=6,
)
flat = scalars | st.lists(scalars, max_size=3)
records = st.fixed_dictionaries(
    {"type": tags | flat},
    optional={
        "name": values,
        "username": flat,
        "email": flat,
        "total": flat,
        "lines": values,
        "event_id": flat,
        "occurred_on": flat,
    },
)


def valid_stream(format: str) -> bytes:
    buffer = io.BytesIO()
    events = [Registered(name="a"), Ordered(total=1.5, lines=[1, 2]), Registered(name="b")]
    CODEC.write(buffer, events * 3, format=format, batch_size=4)
    return buffer.getvalue()


@st.composite
def mutated(draw: Any, format: str) -> bytes:
    data = bytearray(valid_stream(format))
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        else:
            del data[where:]
    return bytes(data)


@fuzz
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    exercise(data)


@settings(fuzz, max_examples=max(1, EXAMPLES // 2))  # generating these is the slow part
@given(st.lists(records, max_size=3))
def test_structured_records(batch: list[dict[str, Any]]) -> None:
    for record in batch:
        try:
            as_msgpack = msgspec.msgpack.encode(record)
            as_json = msgspec.json.encode(record)
        except (TypeError, OverflowError, msgspec.EncodeError):
            continue  # not encodable in that format (bytes in JSON, NaN...)
        exercise(as_msgpack)
        exercise(as_json)
        exercise(as_json + b"\n" + as_json + b" " + as_json)
    try:
        payload = msgspec.msgpack.encode(batch)
    except (TypeError, OverflowError, msgspec.EncodeError):
        return
    exercise(struct.pack("<I", len(payload)) + payload)


@st.composite
def hostile(draw: Any) -> bytes:
    """Shapes known to break decoders: deep nesting, huge version numbers, lying lengths."""
    depth = draw(st.integers(1, 3000))
    digits = draw(st.integers(1, 6000))
    shape = draw(st.sampled_from(["deep-msgpack", "deep-json", "deep-field", "tag", "length"]))
    if shape == "deep-msgpack":
        return b"\x91" * depth + b"\x01"
    if shape == "deep-json":
        return b"[" * depth + b"]" * depth
    if shape == "deep-field":
        return b'{"type":"Registered.v1","username":' + b"[" * depth + b"]" * depth + b"}"
    if shape == "tag":
        tag = draw(st.sampled_from(["Registered", "X", ""])) + ".v" + "7" * digits
        return draw(st.sampled_from([msgspec.msgpack.encode, msgspec.json.encode]))({"type": tag})
    declared = draw(st.integers(0, 2**20))  # bounded: the 1 GiB case is its own test
    return struct.pack("<I", declared) + draw(st.binary(max_size=16))


@fuzz
@given(hostile())
def test_hostile_shapes(data: bytes) -> None:
    exercise(data)


@fuzz
@given(mutated("msgpack"))
def test_mutated_msgpack_streams(data: bytes) -> None:
    exercise(data)
    exercise(data[len(b"domainbus msgpack 1\n") :])


@fuzz
@given(mutated("jsonl"))
def test_mutated_json_lines(data: bytes) -> None:
    exercise(data)


def test_atheris() -> None:
    pytest.importorskip("atheris")
    target = Path(__file__).with_name("decoder_fuzz_support.py")
    runs = os.environ.get("DOMAINBUS_FUZZ_RUNS", "2000")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(target), f"-runs={runs}", "-max_len=2048", "-seed=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done" in done.stderr

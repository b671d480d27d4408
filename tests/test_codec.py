"""EventCodec and event streams: round-trips, chunking, bad input, dead letters, upcasting."""

from __future__ import annotations

import io
import json
import pickle
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domainbus import DomainEvent
from domainbus.codec import MAGIC, DeadLetterFile, EventCodec, split_tag
from domainbus.errors import DecodeError


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


class OrderPlaced(DomainEvent, tag="order.placed"):
    order_id: int
    total: float = 0.0


class Tagged(DomainEvent):
    tags: list[str]
    note: str | None = None


codec = EventCodec(UserRegistered, OrderPlaced, Tagged)
FORMATS = ("msgpack", "jsonl")

text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)
common = {
    "event_id": st.uuids(),
    "occurred_on": st.datetimes(timezones=st.just(UTC)),
}
events_strategy = st.one_of(
    st.builds(UserRegistered, user_id=text, username=text, email=text, **common),
    st.builds(
        OrderPlaced,
        order_id=st.integers(-(2**63), 2**63 - 1),
        total=st.floats(allow_nan=False, allow_infinity=False),
        **common,
    ),
    st.builds(Tagged, tags=st.lists(text, max_size=3), note=st.none() | text, **common),
)


EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def users(n: int, start: int = 0) -> list[DomainEvent]:
    """Events that compare equal from call to call (fixed ids and times)."""
    return [
        UserRegistered(
            user_id=f"u-{i}",
            username=f"user{i}",
            email=f"{i}@example.com",
            event_id=uuid.UUID(int=i),
            occurred_on=EPOCH + timedelta(seconds=i),
        )
        for i in range(start, start + n)
    ]


def stream(events: list[DomainEvent], format: str = "msgpack", batch_size: int = 1024) -> bytes:
    buffer = io.BytesIO()
    codec.write(buffer, events, format=format, batch_size=batch_size)
    return buffer.getvalue()


def read_all(data: bytes, **options: Any) -> list[DomainEvent]:
    return [event for batch in codec.iter_batches(io.BytesIO(data), **options) for event in batch]


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def raw_record(event: DomainEvent, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = msgspec.to_builtins(event)
    record.update(changes)
    return record


# -- round-trips -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(event=events_strategy)
def test_single_event_round_trips_in_both_encodings(event: DomainEvent) -> None:
    assert codec.decode(codec.encode(event)) == event
    assert codec.decode_json(codec.encode_json(event)) == event


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(events_strategy, max_size=30),
    format=st.sampled_from(FORMATS),
    frame_size=st.integers(1, 8),
    batch_size=st.integers(1, 10),
)
def test_streams_round_trip_in_order_through_a_dispatcher(
    backend: ModuleType, events: list[DomainEvent], format: str, frame_size: int, batch_size: int
) -> None:
    seen: list[DomainEvent] = []
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(DomainEvent, seen.append)
    data = stream(events, format, frame_size)
    for batch in codec.iter_batches(io.BytesIO(data), batch_size):
        assert 1 <= len(batch) <= batch_size
        dispatcher.dispatch_batch(batch)
    assert seen == events
    assert codec.decode_batch(codec.encode_batch(events)) == events


def test_paths_and_format_detection(tmp_path: Path) -> None:
    events = users(5)
    for name in ("log.bin", "log.jsonl"):
        path = tmp_path / name
        assert codec.write(path, events, format=None) == 5
        assert path.read_bytes().startswith(MAGIC) is (name == "log.bin")
        assert [e for batch in codec.iter_batches(path) for e in batch] == events
        assert [e for batch in codec.iter_batches(str(path)) for e in batch] == events


def test_writer_appends_across_calls_in_frames_of_batch_size() -> None:
    buffer = io.BytesIO()
    with codec.writer(buffer, batch_size=4) as writer:
        writer.write(users(3))
        writer.write(users(6, start=3))
    data = buffer.getvalue()
    (first_frame,) = struct.unpack_from("<I", data, len(MAGIC))
    assert len(codec.decode_batch(data[len(MAGIC) + 4 : len(MAGIC) + 4 + first_frame])) == 4
    assert read_all(data) == users(9)
    assert writer.count == 9


# -- chunked reading -------------------------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("batch_size", [1, 5, 7, 10, 100])
def test_batches_cross_frame_boundaries(format: str, batch_size: int) -> None:
    events = users(23)
    batches = list(codec.iter_indexed_batches(io.BytesIO(stream(events, format, 7)), batch_size))
    assert [e for b in batches for e in b.events] == events
    assert [len(b.events) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert [b.start for b in batches] == list(range(0, 23, batch_size))


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("start_at", [0, 1, 6, 7, 8, 22, 23, 50])
def test_start_at_counts_events_across_the_stream(format: str, start_at: int) -> None:
    events = users(23)
    data = stream(events, format, 7)
    batches = list(codec.iter_indexed_batches(io.BytesIO(data), 5, start_at=start_at))
    assert [e for b in batches for e in b.events] == events[start_at:]
    if batches:
        assert batches[0].start == start_at


def test_blank_jsonl_lines_are_skipped_but_counted_as_lines() -> None:
    lines = stream(users(3), "jsonl").splitlines(keepends=True)
    data = b"\n" + lines[0] + b"  \n" + lines[1] + lines[2]
    assert read_all(data) == users(3)
    assert read_all(data, start_at=2) == users(3)[2:]
    with pytest.raises(DecodeError) as caught:
        read_all(data + b"\n{oops\n")
    assert (caught.value.line, caught.value.index) == (7, 3)


def test_arguments_are_checked_when_reading_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        codec.iter_batches(io.BytesIO(b""), format="xml")
    with pytest.raises(ValueError, match="batch_size"):
        codec.iter_batches(io.BytesIO(b""), batch_size=0)
    with pytest.raises(ValueError, match="start_at"):
        codec.iter_batches(io.BytesIO(b""), start_at=-1)
    with pytest.raises(FileNotFoundError):
        codec.iter_batches(tmp_path / "missing.bin")


# -- bad input -------------------------------------------------------------------------------

GOOD = users(3)
GOOD_FRAME = frame(codec.encode_batch(GOOD))
FIRST_FRAME_AT = len(MAGIC)
SECOND_FRAME_AT = len(MAGIC) + len(GOOD_FRAME)


def bad_frame(*records: object) -> bytes:
    return frame(msgspec.msgpack.encode(list(records)))


def error_of(data: bytes, **options: Any) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        read_all(data, **options)
    return caught.value


def test_a_cut_off_frame_is_truncated_at_its_offset() -> None:
    data = MAGIC + GOOD_FRAME + GOOD_FRAME[:-5]
    error = error_of(data)
    assert (error.reason, error.offset, error.index) == ("truncated", SECOND_FRAME_AT, 3)
    assert error_of(MAGIC + GOOD_FRAME + b"\x01\x00").reason == "truncated"


def test_events_before_a_bad_record_are_delivered_first() -> None:
    record = raw_record(GOOD[0], type="Nope")
    batches = codec.iter_indexed_batches(
        io.BytesIO(MAGIC + bad_frame(*map(raw_record, GOOD), record)), 10
    )
    assert next(batches).events == GOOD
    with pytest.raises(DecodeError, match="unknown-tag"):
        next(batches)


def test_garbage_is_reported_with_the_record_offset() -> None:
    error = error_of(MAGIC + b"\x00\x00\x00\x00")
    assert (error.reason, error.offset) == ("garbage", FIRST_FRAME_AT)
    assert error_of(MAGIC + frame(b"\xc1\xc1")).reason == "garbage"
    first = msgspec.msgpack.encode(raw_record(GOOD[0]))
    error = error_of(MAGIC + GOOD_FRAME + bad_frame(raw_record(GOOD[0]), 42))
    assert (error.reason, error.index) == ("garbage", 4)
    assert error.offset == SECOND_FRAME_AT + 4 + 1 + len(first)
    assert "expected an event object, got int" in str(error)


def test_a_stream_without_the_header_is_garbage() -> None:
    error = error_of(b"\x93not msgpack frames", format="msgpack")
    assert (error.reason, error.offset) == ("garbage", 0)


def test_an_oversized_length_prefix_is_garbage() -> None:
    error = error_of(MAGIC + b"\xff\xff\xff\xff" + b"x" * 10)
    assert error.reason == "garbage"
    assert "corrupt length prefix" in error.detail


def test_unknown_tags_and_wrong_fields_are_named() -> None:
    error = error_of(MAGIC + bad_frame(raw_record(GOOD[0], type="Nope")))
    assert (error.reason, error.index) == ("unknown-tag", 0)
    assert "'Nope'" in str(error)
    error = error_of(MAGIC + bad_frame(raw_record(GOOD[0], user_id=5)))
    assert error.reason == "invalid-field"
    assert "Expected `str`, got `int`" in str(error)
    untagged = raw_record(GOOD[0])
    del untagged["type"]
    assert error_of(MAGIC + bad_frame(untagged)).reason == "unknown-tag"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"type":"UserRegistered","user_id":"u"', "truncated"),
        (b"not json at all", "garbage"),
        (b"[1, 2]", "garbage"),
        (b'{"type":"Nope"}', "unknown-tag"),
        (b'{"type":"order.placed","order_id":"seven"}', "invalid-field"),
    ],
)
def test_jsonl_errors_carry_the_line_number(line: bytes, reason: str) -> None:
    good = stream(GOOD, "jsonl")
    error = error_of(good + line + b"\n" + good)
    assert (error.reason, error.line, error.index, error.offset) == (reason, 4, 3, None)


def test_single_record_decoding_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        codec.decode(codec.encode(GOOD[0])[:-3])
    with pytest.raises(DecodeError, match="garbage"):
        codec.decode_json(b"{]")
    with pytest.raises(DecodeError) as caught:
        codec.decode_batch(msgspec.msgpack.encode([raw_record(GOOD[0]), {"type": "Nope"}]))
    assert (caught.value.reason, caught.value.index) == ("unknown-tag", 1)


def test_encoding_an_unknown_event_type_is_refused() -> None:
    class Stranger(DomainEvent):
        pass

    with pytest.raises(TypeError, match=r"cannot encode events of type .*Stranger"):
        codec.encode(Stranger())
    with pytest.raises(TypeError, match="Stranger"):
        codec.write(io.BytesIO(), [*GOOD, Stranger()])


# -- dead letters ----------------------------------------------------------------------------


def test_on_invalid_receives_every_bad_record_and_reading_goes_on() -> None:
    bad = [raw_record(GOOD[0], type="Nope"), raw_record(GOOD[1], user_id=1)]
    data = MAGIC + GOOD_FRAME + bad_frame(raw_record(GOOD[2]), *bad, raw_record(GOOD[0]))
    data += frame(b"\xc1") + GOOD_FRAME + GOOD_FRAME[:-1]
    seen: list[tuple[DecodeError, bytes]] = []
    batches = list(
        codec.iter_indexed_batches(
            io.BytesIO(data), 100, on_invalid=lambda e, r: seen.append((e, r))
        )
    )
    assert [(b.start, len(b.events)) for b in batches] == [(0, 4), (6, 1), (8, 3)]
    assert [(e.reason, e.index) for e, _ in seen] == [
        ("unknown-tag", 4),
        ("invalid-field", 5),
        ("garbage", 7),
        ("truncated", 11),
    ]
    assert msgspec.msgpack.decode(seen[0][1]) == bad[0]


def test_dead_letter_file_keeps_each_record_as_a_json_line(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    dead = DeadLetterFile(path)
    good = stream(GOOD, "jsonl")
    data = good + b'{"type":"Nope"}\n' + good + b"garbage\n"
    assert read_all(data, on_invalid=dead) == GOOD * 2
    dead.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert dead.count == 2
    assert [(r["reason"], r["line"], r["index"]) for r in records] == [
        ("unknown-tag", 4, 3),
        ("garbage", 8, 7),
    ]
    assert records[1]["raw_base64"] == "Z2FyYmFnZQo="


def test_no_dead_letter_file_is_created_without_bad_records(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    assert read_all(stream(GOOD), on_invalid=dead) == GOOD
    assert not (tmp_path / "dead.jsonl").exists()


# -- schema evolution ------------------------------------------------------------------------


class UserRegisteredV1(DomainEvent, tag="UserRegistered"):
    user_id: str
    name: str


class UserRegisteredV2(DomainEvent, tag="UserRegistered.v2"):
    user_id: str
    first_name: str
    last_name: str


class UserRegisteredV3(DomainEvent, tag="UserRegistered.v3"):
    user_id: str
    first_name: str
    last_name: str
    locale: str


def v1_log(n: int, format: str = "msgpack") -> bytes:
    """A log written by the version-1 code."""
    old = EventCodec(UserRegisteredV1)
    buffer = io.BytesIO()
    events = [UserRegisteredV1(user_id=f"u-{i}", name=f"Ada{i} Lovelace") for i in range(n)]
    old.write(buffer, events, format, batch_size=4)
    return buffer.getvalue()


def v3_codec(calls: list[str] | None = None) -> EventCodec:
    calls = [] if calls is None else calls
    new = EventCodec(UserRegisteredV3, OrderPlaced)

    @new.upcaster("UserRegistered", from_version=1)
    def split_name(fields: dict[str, Any]) -> dict[str, Any]:
        calls.append("v1")
        first, _, last = fields.pop("name").partition(" ")
        return {**fields, "first_name": first, "last_name": last}

    @new.upcaster("UserRegistered", from_version=2)
    def add_locale(fields: dict[str, Any]) -> dict[str, Any]:
        calls.append("v2")
        return {**fields, "locale": "en"}

    return new


def test_split_tag_reads_the_version_suffix() -> None:
    assert split_tag("UserRegistered") == ("UserRegistered", 1)
    assert split_tag("UserRegistered.v12") == ("UserRegistered", 12)
    assert split_tag("order.placed") == ("order.placed", 1)
    assert split_tag(7) == (7, 1)


@pytest.mark.parametrize("format", FORMATS)
def test_a_v1_log_replays_through_chained_upcasters(format: str) -> None:
    new = v3_codec()
    events = [e for batch in new.iter_batches(io.BytesIO(v1_log(10, format)), 3) for e in batch]
    assert len(events) == 10
    assert all(type(e) is UserRegisteredV3 for e in events)
    assert events[7] == UserRegisteredV3(
        user_id="u-7",
        first_name="Ada7",
        last_name="Lovelace",
        locale="en",
        event_id=events[7].event_id,
        occurred_on=events[7].occurred_on,
    )


def test_upcasting_keeps_ids_and_times_and_mixes_with_current_records() -> None:
    new = v3_codec()
    old_event = UserRegisteredV1(user_id="u-1", name="Grace Hopper")
    current = UserRegisteredV3(user_id="u-2", first_name="A", last_name="B", locale="fr")
    mixed = msgspec.msgpack.encode([old_event, current, OrderPlaced(order_id=1)])
    upcast, same, order = new.decode_batch(mixed)
    assert (upcast.event_id, upcast.occurred_on) == (old_event.event_id, old_event.occurred_on)
    assert same == current
    assert order == OrderPlaced(order_id=1, event_id=order.event_id, occurred_on=order.occurred_on)
    assert new.decode_json(msgspec.json.encode(old_event)).first_name == "Grace"  # type: ignore[attr-defined]


def test_current_records_never_reach_the_upcasters() -> None:
    calls: list[str] = []
    new = v3_codec(calls)
    current = [UserRegisteredV3(user_id="u", first_name="a", last_name="b", locale="en")] * 20
    buffer = io.BytesIO()
    new.write(buffer, current, batch_size=8)
    assert [e for b in new.iter_batches(io.BytesIO(buffer.getvalue())) for e in b] == current
    assert calls == []
    new.decode(new.encode(current[0]))
    assert calls == []
    new.decode(msgspec.msgpack.encode(UserRegisteredV2(user_id="u", first_name="a", last_name="b")))
    assert calls == ["v2"]


def test_a_field_added_with_a_default_decodes_old_records() -> None:
    class Placed(DomainEvent, tag="order.placed"):
        order_id: int

    old = Placed(order_id=3)
    decoded = codec.decode(EventCodec(Placed).encode(old))
    assert decoded == OrderPlaced(
        order_id=3, total=0.0, event_id=old.event_id, occurred_on=old.occurred_on
    )


def test_upcasting_failures_are_decode_errors() -> None:
    new = EventCodec(UserRegisteredV3)
    old = msgspec.msgpack.encode(UserRegisteredV1(user_id="u", name="x"))
    with pytest.raises(
        DecodeError, match="no upcaster registered for 'UserRegistered' from version 1"
    ):
        new.decode(old)

    @new.upcaster("UserRegistered", from_version=1)
    def broken(fields: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("surname")

    with pytest.raises(DecodeError, match=r"upcast-failed.*raised KeyError") as caught:
        new.decode(old)
    assert caught.value.reason == "upcast-failed"

    @new.upcaster("UserRegistered", from_version=2)
    def incomplete(fields: dict[str, Any]) -> dict[str, Any]:
        return fields

    v2 = msgspec.msgpack.encode(UserRegisteredV2(user_id="u", first_name="a", last_name="b"))
    with pytest.raises(DecodeError, match=r"does not fit UserRegisteredV3.*locale"):
        new.decode(v2)
    newer = msgspec.msgpack.encode(
        {**raw_record(UserRegisteredV1(user_id="u", name="x")), "type": "UserRegistered.v4"}
    )
    with pytest.raises(DecodeError, match="unknown-tag"):
        new.decode(newer)


def test_upcaster_registration_is_checked() -> None:
    new = EventCodec(UserRegisteredV3)
    with pytest.raises(ValueError, match="no event named 'Nope'"):
        new.upcaster("Nope", from_version=1)
    with pytest.raises(ValueError, match="from_version must be an int from 1 to 2"):
        new.upcaster("UserRegistered", from_version=3)
    new.upcaster("UserRegistered", from_version=1)(lambda fields: fields)
    with pytest.raises(ValueError, match="exists"):
        new.upcaster("UserRegistered", from_version=1)


# -- construction ----------------------------------------------------------------------------


def test_codec_construction_is_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EventCodec()
    with pytest.raises(TypeError, match="not a DomainEvent subclass"):
        EventCodec(int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not DomainEvent itself"):
        EventCodec(DomainEvent)

    class Other(DomainEvent, tag="order.placed"):
        pass

    with pytest.raises(ValueError, match=r"share the tag 'order.placed'"):
        EventCodec(OrderPlaced, Other)
    with pytest.raises(ValueError, match="both versions of 'UserRegistered'"):
        EventCodec(UserRegisteredV1, UserRegisteredV2)
    assert EventCodec(UserRegistered, UserRegistered).event_types == (UserRegistered,)


def test_from_modules_takes_the_events_defined_in_each_module() -> None:
    from domainbus import demo

    built = EventCodec.from_modules("domainbus.demo")
    assert built.event_types == demo.EVENT_TYPES
    assert EventCodec.from_modules(demo).event_types == demo.EVENT_TYPES
    with pytest.raises(ValueError, match="no DomainEvent subclasses defined in json"):
        EventCodec.from_modules(json)


def test_decode_errors_survive_pickling() -> None:
    error = error_of(MAGIC + bad_frame(raw_record(GOOD[0], user_id=5)))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.offset, copy.index, str(copy)) == (
        error.reason,
        error.offset,
        error.index,
        str(error),
    )

"""The fuzz target shared by tests/test_fuzz_decoders.py (Hypothesis) and the atheris run.

`exercise(data)` feeds one input to every decode path of a codec that has versioned events
and an upcaster (so the slow, upcasting path runs too); anything but DecodeError escaping is a
bug. Run it under atheris with `python tests/decoder_fuzz_support.py -runs=100000`.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import msgspec

from domainbus import DomainEvent
from domainbus.codec import MAGIC, EventCodec
from domainbus.errors import DecodeError


class Registered(DomainEvent, kw_only=True, tag="Registered.v2"):
    name: str
    email: str = ""


class Ordered(DomainEvent, kw_only=True):
    total: float
    lines: list[int] = msgspec.field(default_factory=list)


CODEC = EventCodec(Registered, Ordered)


@CODEC.upcaster("Registered", from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    fields["name"] = fields.pop("username")  # KeyError on hostile input: an upcast failure
    return fields


def _drain(source: bytes, **options: Any) -> None:
    for _ in CODEC.iter_batches(io.BytesIO(source), batch_size=3, **options):
        pass


def exercise(data: bytes) -> None:
    """Every decode path on `data`: only DecodeError may come out."""
    skip = {"on_invalid": lambda error, raw: None}
    calls = (
        lambda: CODEC.decode(data),
        lambda: CODEC.decode_batch(data),
        lambda: CODEC.decode_json(data),
        lambda: _drain(data),
        lambda: _drain(data, **skip),
        lambda: _drain(MAGIC + data),
        lambda: _drain(MAGIC + data, **skip),
        lambda: _drain(MAGIC + data, start_at=2, **skip),
        lambda: _drain(data, format="jsonl"),
        lambda: _drain(data, format="jsonl", **skip),
        lambda: _drain(data, format="jsonl", start_at=1, **skip),
    )
    for call in calls:
        try:
            call()
        except DecodeError:
            pass


def main() -> None:  # pragma: no cover (run by the atheris test in a subprocess)
    import atheris

    atheris.Setup(sys.argv, lambda data: exercise(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""Event versions and upcasters: how records written by older code become current events.

The version lives in the tag: `"UserRegistered.v2"` is version 2 of the event named
"UserRegistered"; a tag without a `.vN` suffix is version 1. A codec knows one (current) class
per name, so an old record's tag matches no class and the fast typed decode rejects it rather
than misreading it. Only such records reach `Versions.resolve`: their raw field mapping goes
through the registered upcasters, version by version, then is converted to the current class.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from domainbus.errors import DecodeError
from domainbus.events import DomainEvent

__all__ = ["Tag", "Upcaster", "Versions", "split_tag"]

Tag = str | int
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcaster)

# at most 9 digits: a longer "version" is no version (and int() of thousands of digits fails)
_VERSIONED_TAG = re.compile(r"(?P<name>.+)\.v(?P<version>[0-9]{1,9})")


def split_tag(tag: Tag) -> tuple[Tag, int]:
    """`(name, version)` of a tag: "UserRegistered.v2" -> ("UserRegistered", 2); no suffix: 1."""
    if isinstance(tag, str) and (match := _VERSIONED_TAG.fullmatch(tag)):
        return match["name"], int(match["version"])
    return tag, 1


class Versions:
    """The current class of each event name, and the upcasters from its older versions."""

    def __init__(self, event_types: tuple[type[DomainEvent], ...], tag_field: str) -> None:
        self.tag_field = tag_field
        self.by_tag: dict[Tag, type[DomainEvent]] = {}
        self.current: dict[Tag, tuple[int, type[DomainEvent]]] = {}
        self.upcasters: dict[tuple[Tag, int], Upcaster] = {}
        for event_type in event_types:
            self._add(event_type)

    def _add(self, event_type: type[DomainEvent]) -> None:
        tag: Tag = event_type.__struct_config__.tag  # type: ignore[assignment]
        if tag in self.by_tag:
            other = self.by_tag[tag].__qualname__
            raise ValueError(f"{event_type.__qualname__} and {other} share the tag {tag!r}")
        name, version = split_tag(tag)
        if name in self.current:
            other = self.current[name][1].__qualname__
            raise ValueError(
                f"{event_type.__qualname__} and {other} are both versions of {name!r}; "
                "a codec decodes old versions with upcasters, keep only the current class"
            )
        self.by_tag[tag] = event_type
        self.current[name] = (version, event_type)

    def upcaster(self, name: Tag, from_version: int) -> Callable[[U], U]:
        """A decorator registering an upcaster; see `EventCodec.upcaster`."""
        if name not in self.current:
            raise ValueError(f"no event named {name!r} in this codec")
        current = self.current[name][0]
        if not (isinstance(from_version, int) and 1 <= from_version < current):
            raise ValueError(
                f"from_version must be an int from 1 to {current - 1} for {name!r} "
                f"(its current version is {current}), not {from_version!r}"
            )
        if (name, from_version) in self.upcasters:
            raise ValueError(f"an upcaster for {name!r} from version {from_version} exists")

        def register(fn: U) -> U:
            if not callable(fn):
                raise TypeError(f"an upcaster must be callable, not {type(fn).__qualname__}")
            self.upcasters[name, from_version] = fn
            return fn

        return register

    def resolve(self, mapping: object, typed_error: Exception) -> DomainEvent:
        """Upcast an old-version raw record, or raise DecodeError saying why the typed
        decode (which failed with `typed_error`) was right to fail."""
        if not isinstance(mapping, dict):
            raise DecodeError("garbage", f"expected an event object, got {_kind(mapping)}")
        tag = mapping.get(self.tag_field)
        if not isinstance(tag, str | int):
            raise DecodeError("unknown-tag", f"record has no {self.tag_field!r} field")
        if tag in self.by_tag:
            raise DecodeError("invalid-field", str(typed_error))
        name, version = split_tag(tag)
        current_version, event_type = self.current.get(name, (0, DomainEvent))
        if version >= current_version:
            known = ", ".join(map(repr, self.by_tag))
            raise DecodeError("unknown-tag", f"unknown event tag {_show(tag)} (known: {known})")
        fields = {key: value for key, value in mapping.items() if key != self.tag_field}
        for step in range(version, current_version):
            fields = self._step(name, step, fields)
        fields[self.tag_field] = event_type.__struct_config__.tag
        try:
            return msgspec.convert(fields, event_type)
        except RecursionError:
            raise DecodeError("garbage", "the record is nested too deeply to be an event") from None
        except msgspec.ValidationError as exc:
            raise DecodeError(
                "upcast-failed",
                f"{name!r} upcast from version {version} does not fit "
                f"{event_type.__qualname__}: {exc}",
            ) from None

    def _step(self, name: Tag, version: int, fields: dict[str, Any]) -> dict[str, Any]:
        upcaster = self.upcasters.get((name, version))
        if upcaster is None:
            raise DecodeError(
                "upcast-failed", f"no upcaster registered for {name!r} from version {version}"
            )
        try:
            result = upcaster(fields)
        except Exception as exc:
            raise DecodeError(
                "upcast-failed", f"upcaster for {name!r} from version {version} raised {exc!r}"
            ) from exc
        if not isinstance(result, dict):
            raise DecodeError(
                "upcast-failed",
                f"upcaster for {name!r} from version {version} returned {_kind(result)}, "
                "not a dict",
            )
        return result


def _show(tag: Tag) -> str:
    """repr of a tag, cut short (an attacker's tag may be megabytes, or a huge integer)."""
    if isinstance(tag, int):
        return repr(tag) if abs(tag) < 10**30 else f"<an integer of {tag.bit_length()} bits>"
    return repr(tag) if len(tag) <= 80 else f"{tag[:60]!r}... ({len(tag)} characters)"


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__

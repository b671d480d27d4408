"""Rule 10: bad input gets a clear TypeError (or ValueError) at the call that made it."""

from __future__ import annotations

from typing import Any

import pytest

from domainbus import DomainEvent


class Evt(DomainEvent):
    pass


def test_event_type_must_be_a_class(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    for call in (
        lambda: d.register_handler("Evt", print),
        lambda: d.unregister_handler(Evt(), print),
        lambda: d.handlers_for(None),
        lambda: d.handler(42),
    ):
        with pytest.raises(TypeError, match="event_type must be a class, not "):
            call()


def test_handler_must_be_callable(make_dispatcher: Any) -> None:
    with pytest.raises(TypeError, match="handler must be callable, not int"):
        make_dispatcher().register_handler(Evt, 3)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"priority": "high"}, TypeError, "priority must be an int, not str"),
        ({"priority": 1.5}, TypeError, "priority must be an int, not float"),
        ({"priority": 2**63}, OverflowError, "priority must fit in a signed 64-bit integer"),
        ({"once": 1}, TypeError, "once must be a bool, not int"),
        ({"weak": None}, TypeError, "weak must be a bool, not NoneType"),
    ],
)
def test_bad_options(
    make_dispatcher: Any, options: dict[str, Any], error: type, message: str
) -> None:
    d = make_dispatcher()
    with pytest.raises(error, match=message):
        d.register_handler(Evt, print, **options)
    with pytest.raises(error, match=message):
        d.handler(Evt, **options)
    assert d.handlers_for(Evt) == ()


def test_extreme_priorities_are_fine(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_handler(Evt, repr, priority=-(2**63))
    d.register_handler(Evt, str, priority=2**63 - 1)
    assert d.handlers_for(Evt) == (str, repr)


def test_batch_needs_an_iterable(make_dispatcher: Any) -> None:
    with pytest.raises(
        TypeError, match="dispatch_batch\\(\\) needs an iterable of events, not int"
    ):
        make_dispatcher().dispatch_batch(5)


def test_batch_iterator_errors_propagate(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[Any] = []
    d.register_handler(Evt, seen.append)

    def events() -> Any:
        yield Evt()
        raise LookupError("source broke")

    with pytest.raises(LookupError, match="source broke"):
        d.dispatch_batch(events())
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"on_error": "ignore"}, TypeError, "on_error must be 'raise', 'collect' or a callable"),
        ({"on_error": 3}, TypeError, "on_error must be 'raise', 'collect' or a callable"),
        ({"on_unhandled": "log"}, TypeError, "on_unhandled must be a callable or None, not str"),
        (
            {"nested": "deferred"},
            ValueError,
            "nested must be 'immediate' or 'queue', not 'deferred'",
        ),
    ],
)
def test_bad_constructor_options(
    make_dispatcher: Any, options: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        make_dispatcher(**options)


def test_options_are_keyword_only(make_dispatcher: Any) -> None:
    with pytest.raises(TypeError):
        make_dispatcher("collect")
    with pytest.raises(TypeError):
        make_dispatcher().register_handler(Evt, print, 5)

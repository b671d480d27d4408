"""Rules 7-9: the unhandled hook, the error policies, coroutines in the synchronous loop."""

from __future__ import annotations

import gc
import warnings
from typing import Any

import pytest

from domainbus import DomainEvent


class Job(DomainEvent):
    n: int = 0


class Unrouted(DomainEvent):
    pass


class Boom(Exception):
    pass


def failing(event: Job) -> None:
    raise Boom(f"job {event.n}")


NOTE = f"domainbus: raised by handler {__name__}.failing for Job"


def test_unhandled_hook_gets_events_without_handlers(make_dispatcher: Any) -> None:
    missed: list[Any] = []
    d = make_dispatcher(on_unhandled=missed.append)
    d.register_handler(Job, lambda e: None)
    event = Unrouted()
    assert d.dispatch(event) == 0
    assert d.dispatch(Job()) == 1
    assert missed == [event]
    assert d.on_unhandled == missed.append


def test_no_hook_means_nothing_happens(make_dispatcher: Any, capsys: Any) -> None:
    assert make_dispatcher().dispatch(Unrouted()) == 0
    assert capsys.readouterr() == ("", "")


def test_raise_propagates_the_same_object_with_a_note(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    after: list[Any] = []
    raised: list[BaseException] = []

    def keep(event: Job) -> None:
        try:
            failing(event)
        except Boom as exc:
            raised.append(exc)
            raise

    d.register_handler(Job, keep)
    d.register_handler(Job, after.append)
    with pytest.raises(Boom) as info:
        d.dispatch(Job(n=1))
    assert info.value is raised[0]
    assert info.value.__notes__ == [
        f"domainbus: raised by handler {keep.__module__}.{keep.__qualname__} for Job"
    ]
    assert after == []
    assert info.traceback[-1].name == "failing"  # the handler's traceback is kept


def test_raise_in_a_batch_names_the_index_and_stops(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    seen: list[int] = []
    d.register_handler(Job, lambda e: seen.append(e.n))
    d.register_handler(Job, lambda e: failing(e) if e.n == 2 else None)
    with pytest.raises(Boom) as info:
        d.dispatch_batch(Job(n=i) for i in range(5))
    assert seen == [0, 1, 2]
    assert info.value.__notes__[0].endswith("for Job at batch index 2")


def test_collect_runs_everything_then_raises_a_group(make_dispatcher: Any) -> None:
    d = make_dispatcher(on_error="collect")
    seen: list[int] = []
    d.register_handler(Job, failing)
    d.register_handler(Job, lambda e: seen.append(e.n))
    with pytest.raises(ExceptionGroup) as info:
        d.dispatch_batch([Job(n=1), Job(n=2)])
    assert seen == [1, 2]
    group = info.value
    assert group.message == "domainbus: 2 handler(s) failed"
    assert [str(e) for e in group.exceptions] == ["job 1", "job 2"]
    assert [e.__notes__ for e in group.exceptions] == [
        [f"{NOTE} at batch index 0"],
        [f"{NOTE} at batch index 1"],
    ]


def test_collect_without_failures_returns_the_count(make_dispatcher: Any) -> None:
    d = make_dispatcher(on_error="collect")
    d.register_handler(Job, lambda e: None)
    assert d.dispatch(Job()) == 1


def test_callback_reports_and_goes_on(make_dispatcher: Any) -> None:
    reports: list[tuple[Any, Any, Any]] = []
    d = make_dispatcher(on_error=lambda exc, event, handler: reports.append((exc, event, handler)))
    seen: list[int] = []
    d.register_handler(Job, failing)
    d.register_handler(Job, lambda e: seen.append(e.n))
    event = Job(n=4)
    assert d.dispatch(event) == 2
    assert seen == [4]
    [(exc, got_event, handler)] = reports
    assert isinstance(exc, Boom) and got_event is event and handler is failing
    assert exc.__notes__ == [NOTE]


def test_callback_that_raises_propagates(make_dispatcher: Any) -> None:
    def strict(exc: Exception, event: Any, handler: Any) -> None:
        raise RuntimeError("policy says stop") from exc

    d = make_dispatcher(on_error=strict)
    d.register_handler(Job, failing)
    with pytest.raises(RuntimeError, match="policy says stop"):
        d.dispatch(Job())


@pytest.mark.parametrize("policy", ["raise", "collect", "callback"])
def test_base_exceptions_propagate_at_once(make_dispatcher: Any, policy: str) -> None:
    on_error: Any = (lambda *a: None) if policy == "callback" else policy
    d = make_dispatcher(on_error=on_error)
    after: list[Any] = []

    def interrupt(event: Job) -> None:
        raise KeyboardInterrupt

    d.register_handler(Job, interrupt)
    d.register_handler(Job, after.append)
    with pytest.raises(KeyboardInterrupt):
        d.dispatch_batch([Job(), Job()])
    assert after == []


def test_on_error_property(make_dispatcher: Any) -> None:
    assert make_dispatcher().on_error == "raise"
    assert make_dispatcher(on_error="collect").on_error == "collect"


def test_async_handler_in_sync_dispatch_is_a_type_error_without_warning(
    make_dispatcher: Any,
) -> None:
    d = make_dispatcher()

    async def notify(event: Job) -> None:
        raise AssertionError("never runs")

    d.register_handler(Job, notify)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "never awaited" RuntimeWarning would fail here
        with pytest.raises(
            TypeError, match="returned a coroutine: async handlers need dispatch_async"
        ):
            d.dispatch(Job())
        gc.collect()


def test_async_handler_under_callback_policy_is_reported(make_dispatcher: Any) -> None:
    reports: list[Any] = []
    d = make_dispatcher(on_error=lambda exc, event, handler: reports.append(type(exc)))

    async def notify(event: Job) -> None:
        pass

    d.register_handler(Job, notify)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert d.dispatch(Job()) == 1
        gc.collect()
    assert reports == [TypeError]


def test_handler_returning_values_is_fine(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_handler(Job, lambda e: 42)
    assert d.dispatch(Job()) == 1

"""Commands (domainbus.pure.commands, rules 1-8): one handler, exact routing, results, errors,
events after the command in the dispatcher's nested mode. Every test runs on both backends."""

from __future__ import annotations

import asyncio
import gc
import threading
import traceback
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import pytest

from domainbus import DomainbusError, UnknownCommand


@dataclass
class Allocate:
    sku: str
    qty: int = 1


class AllocateUrgently(Allocate):
    pass


@dataclass
class Cancel:
    sku: str


@dataclass
class Noted:
    text: str


class Boom(Exception):
    pass


def allocate(command: Allocate) -> str:
    return f"batch-for-{command.sku}"


def other_allocate(command: Allocate) -> str:
    return "other"


# -- rule 1: one handler per command type -----------------------------------------------------


def test_execute_returns_the_handlers_result(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    assert d.register_command_handler(Allocate, allocate) is allocate
    assert d.execute(Allocate("lamp")) == "batch-for-lamp"
    assert d.command_handler_for(Allocate) is allocate
    assert d.command_handler_for(Cancel) is None


def test_decorator_registers_and_returns_the_function(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    @d.command_handler(Cancel)
    def cancel(command: Cancel) -> int:
        return len(command.sku)

    assert d.command_handler_for(Cancel) is cancel
    assert d.execute(Cancel("abc")) == 3


def test_same_handler_again_is_a_no_op_a_second_one_is_an_error(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_command_handler(Allocate, allocate)
    assert d.register_command_handler(Allocate, allocate) is allocate
    with pytest.raises(ValueError) as info:
        d.register_command_handler(Allocate, other_allocate)
    message = str(info.value)
    assert "command Allocate already has a handler" in message
    assert f"{__name__}.allocate" in message and f"{__name__}.other_allocate" in message
    assert d.execute(Allocate("x")) == "batch-for-x"  # the first one stays


def test_unregister_and_clear(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_command_handler(Allocate, allocate)
    assert d.unregister_command_handler(Allocate) is True
    assert d.unregister_command_handler(Allocate) is False
    d.register_command_handler(Allocate, other_allocate)  # a new handler is fine now
    d.register_handler(Noted, print)
    d.clear()
    assert d.command_handler_for(Allocate) is None
    assert d.handlers_for(Noted) == ()
    with pytest.raises(UnknownCommand):
        d.execute(Allocate("x"))


def test_bad_input(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    with pytest.raises(TypeError, match="command_type must be a class, not str"):
        d.register_command_handler("Allocate", allocate)
    with pytest.raises(TypeError, match="handler must be callable, not int"):
        d.register_command_handler(Allocate, 3)
    with pytest.raises(TypeError, match="command_type must be a class, not int"):
        d.command_handler(1)
    with pytest.raises(TypeError, match="command_type must be a class"):
        d.unregister_command_handler(None)
    with pytest.raises(TypeError, match="command_type must be a class"):
        d.command_handler_for(Allocate("x"))


# -- rule 2: exact type ----------------------------------------------------------------------


def test_unknown_command_is_a_lookup_error_naming_the_type(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    with pytest.raises(UnknownCommand) as info:
        d.execute(Cancel("x"))
    assert isinstance(info.value, LookupError) and isinstance(info.value, DomainbusError)
    assert info.value.command_type is Cancel
    assert str(info.value) == (
        "no handler for command Cancel (register one with register_command_handler)"
    )


def test_a_subclass_does_not_reach_its_bases_handler(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_command_handler(Allocate, allocate)
    with pytest.raises(UnknownCommand) as info:
        d.execute(AllocateUrgently("x"))
    assert str(info.value) == (
        "no handler for command AllocateUrgently: commands are routed by exact type, and the "
        f"handler of its base class Allocate ({__name__}.allocate) is not used for subclasses; "
        "register one for AllocateUrgently"
    )
    d.register_command_handler(AllocateUrgently, other_allocate)
    assert d.execute(AllocateUrgently("x")) == "other"
    assert d.execute(Allocate("x")) == "batch-for-x"


def test_executing_the_class_is_a_type_error(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.register_command_handler(Allocate, allocate)
    with pytest.raises(TypeError, match="execute\\(\\) needs a command instance, not the class"):
        d.execute(Allocate)


# -- rule 3: results and errors --------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["raise", "collect", "callback"])
def test_exceptions_always_propagate_with_a_note(make_dispatcher: Any, on_error: str) -> None:
    seen: list[Any] = []
    d = make_dispatcher(on_error=seen.append if on_error == "callback" else on_error)
    error = Boom("no stock")

    def failing(command: Allocate) -> None:
        raise error

    d.register_command_handler(Allocate, failing)
    with pytest.raises(Boom) as info:
        d.execute(Allocate("x"))
    assert info.value is error
    assert info.value.__notes__ == [
        f"domainbus: raised by command handler {__name__}.{failing.__qualname__} for Allocate"
    ]
    assert seen == []  # on_error is the policy for events only


def test_keyboard_interrupt_propagates_as_is(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    def interrupted(command: Allocate) -> None:
        raise KeyboardInterrupt

    d.register_command_handler(Allocate, interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        d.execute(Allocate("x"))
    assert not hasattr(info.value, "__notes__")


def test_traceback_ends_in_the_users_handler(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.provide(qty=3)

    def handler_with_dependency(command: Allocate, qty: int) -> None:
        raise Boom(qty)

    d.register_command_handler(Allocate, handler_with_dependency)
    with pytest.raises(Boom) as info:
        d.execute(Allocate("x"))
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "handler_with_dependency"
    library = [f for f in frames[1:-1]]  # between the test and the handler
    assert all(f.filename.endswith("pure/commands.py") for f in library)  # none on rust
    assert "handler_with_dependency" in info.value.__notes__[0]


def test_a_coroutine_in_execute_is_the_handlers_type_error(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    async def async_handler(command: Allocate) -> str:
        return "never"

    d.register_command_handler(Allocate, async_handler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "never awaited" warning would fail the test
        with pytest.raises(TypeError) as info:
            d.execute(Allocate("x"))
        gc.collect()
    name = f"{__name__}.{async_handler.__qualname__}"
    assert str(info.value) == (
        f"command handler {name} returned a coroutine: async handlers need execute_async()"
    )
    assert info.value.__notes__ == [f"domainbus: raised by command handler {name} for Allocate"]


# -- rule 4: async ---------------------------------------------------------------------------


def test_execute_async_awaits_the_result(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    async def async_handler(command: Allocate) -> str:
        await asyncio.sleep(0)
        return f"async-{command.sku}"

    d.register_command_handler(Allocate, async_handler)
    d.register_command_handler(Cancel, lambda c: c.sku)  # a plain handler works too
    assert asyncio.run(d.execute_async(Allocate("x"))) == "async-x"
    assert asyncio.run(d.execute_async(Cancel("y"))) == "y"


def test_execute_async_errors(make_dispatcher: Any) -> None:
    d = make_dispatcher(on_error="collect")

    async def async_failing(command: Allocate) -> None:
        await asyncio.sleep(0)
        raise Boom("late")

    d.register_command_handler(Allocate, async_failing)
    with pytest.raises(Boom) as info:
        asyncio.run(d.execute_async(Allocate("x")))
    assert info.value.__notes__ == [
        f"domainbus: raised by command handler {__name__}.{async_failing.__qualname__} for Allocate"
    ]
    coroutine = d.execute_async(Cancel("x"))  # the error comes when awaited, on both
    with pytest.raises(UnknownCommand):
        asyncio.run(coroutine)


# -- rule 5: events while a command runs -----------------------------------------------------


def wire_events(d: Any, log: list[str]) -> None:
    """Allocate dispatches Noted(a) and Noted(b); a's handler dispatches Noted(a.child) and
    executes Cancel, whose handler dispatches Noted(cancelled)."""

    def handle_allocate(command: Allocate) -> str:
        log.append("allocate")
        d.dispatch(Noted("a"))
        d.dispatch(Noted("b"))
        log.append("allocate-done")
        return "result"

    def handle_cancel(command: Cancel) -> str:
        log.append("cancel")
        d.dispatch(Noted("cancelled"))
        return "cancel-result"

    def on_noted(event: Noted) -> None:
        log.append(f"noted {event.text}")
        if event.text == "a":
            d.dispatch(Noted("a.child"))
            log.append(f"nested execute -> {d.execute(Cancel('x'))}")

    d.register_command_handler(Allocate, handle_allocate)
    d.register_command_handler(Cancel, handle_cancel)
    d.register_handler(Noted, on_noted)


def test_queue_mode_is_the_cosmic_python_order(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[str] = []
    wire_events(d, log)
    assert d.execute(Allocate("x")) == "result"
    assert log == [
        "allocate", "allocate-done",
        "noted a", "cancel", "nested execute -> cancel-result",
        "noted b", "noted a.child", "noted cancelled",
    ]  # fmt: skip


def test_queue_mode_async_is_the_same_order(make_dispatcher: Any) -> None:
    d = make_dispatcher(nested="queue")
    log: list[str] = []

    async def handle_allocate(command: Allocate) -> str:
        log.append("allocate")
        await d.dispatch_async(Noted("a"))
        await d.dispatch_async(Noted("b"))
        return "result"

    async def on_noted(event: Noted) -> None:
        log.append(f"noted {event.text}")
        if event.text == "a":
            await d.dispatch_async(Noted("a.child"))
            log.append(f"nested -> {await d.execute_async(Cancel('x'))}")

    async def handle_cancel(command: Cancel) -> str:
        await d.dispatch_async(Noted("cancelled"))
        return "cancelled"

    d.register_command_handler(Allocate, handle_allocate)
    d.register_command_handler(Cancel, handle_cancel)
    d.register_handler(Noted, on_noted)
    assert asyncio.run(d.execute_async(Allocate("x"))) == "result"
    assert log == [
        "allocate", "noted a", "nested -> cancelled", "noted b", "noted a.child",
        "noted cancelled",
    ]  # fmt: skip


def test_immediate_mode_is_depth_first(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []
    wire_events(d, log)
    assert d.execute(Allocate("x")) == "result"
    assert log == [
        "allocate", "noted a", "noted a.child", "cancel", "noted cancelled",
        "nested execute -> cancel-result", "noted b", "allocate-done",
    ]  # fmt: skip


def test_queue_mode_a_failing_handler_drops_its_queued_events_with_a_note(
    make_dispatcher: Any,
) -> None:
    d = make_dispatcher(nested="queue")
    log: list[str] = []
    d.register_handler(Noted, lambda e: log.append(e.text))

    def handler(command: Allocate) -> None:
        d.dispatch(Noted("one"))
        d.dispatch(Noted("two"))
        raise Boom("after dispatching")

    d.register_command_handler(Allocate, handler)
    with pytest.raises(Boom) as info:
        d.execute(Allocate("x"))
    assert log == []
    assert info.value.__notes__[1] == "domainbus: 2 queued event(s) were not dispatched"
    d.unregister_command_handler(Allocate)
    d.register_command_handler(Allocate, lambda c: d.dispatch(Noted("fresh")))
    d.execute(Allocate("x"))  # the FIFO of the failed call is gone
    assert log == ["fresh"]


def test_queue_mode_event_failures_follow_on_error(make_dispatcher: Any) -> None:
    def failing(event: Noted) -> None:
        raise Boom(event.text)

    def handler(command: Allocate) -> str:
        d.dispatch(Noted("one"))
        d.dispatch(Noted("two"))
        return "done"

    d = make_dispatcher(nested="queue", on_error="collect")
    d.register_handler(Noted, failing)
    d.register_command_handler(Allocate, handler)
    with pytest.raises(ExceptionGroup) as group:
        d.execute(Allocate("x"))
    assert [str(e) for e in group.value.exceptions] == ["one", "two"]

    seen: list[str] = []
    d = make_dispatcher(nested="queue", on_error=lambda exc, event, h: seen.append(str(exc)))
    d.register_handler(Noted, failing)
    d.register_command_handler(Allocate, handler)
    assert d.execute(Allocate("x")) == "done"
    assert seen == ["one", "two"]

    d = make_dispatcher(nested="queue")
    d.register_handler(Noted, failing)
    d.register_command_handler(Allocate, handler)
    with pytest.raises(Boom, match="one") as info:
        d.execute(Allocate("x"))
    assert info.value.__notes__[-1] == "domainbus: 1 queued event(s) were not dispatched"


# -- rule 6: dependencies --------------------------------------------------------------------


class Notifications:
    def __init__(self) -> None:
        self.sent: list[str] = []


class EmailNotifications(Notifications):
    pass


def test_dependencies_by_name_and_by_type(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    email = EmailNotifications()
    d.provide(email, prefix="batch")

    def handler(command: Allocate, prefix: str, notifications: Notifications, n: int = 7) -> str:
        notifications.sent.append(command.sku)
        return f"{prefix}-{command.sku}-{n}"

    d.register_command_handler(Allocate, handler)
    assert d.execute(Allocate("x")) == "batch-x-7"  # n keeps its default
    assert email.sent == ["x"]
    assert d.command_handler_for(Allocate) is handler


def test_a_missing_dependency_is_an_error_at_registration(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    def needs_uow(command: Allocate, uow: object) -> None: ...

    def needs_notifications(command: Allocate, notifications: Notifications) -> None: ...

    with pytest.raises(TypeError) as info:
        d.register_command_handler(Allocate, needs_uow)
    assert str(info.value) == (
        f"command handler {__name__}.{needs_uow.__qualname__} needs parameter 'uow', but no "
        "dependency named 'uow' was provided (call dispatcher.provide(uow=...) before "
        "registering it)"
    )
    d.provide(other=1)
    with pytest.raises(TypeError, match="named 'notifications' or of type Notifications"):
        d.register_command_handler(Allocate, needs_notifications)
    with pytest.raises(TypeError, match=r"handler .*needs_uow needs parameter 'uow'"):
        d.register_handler(Noted, needs_uow)
    assert d.command_handler_for(Allocate) is None and d.handlers_for(Noted) == ()


def test_ambiguous_and_repeated_dependencies(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.provide(Notifications(), EmailNotifications())

    def handler(command: Allocate, notifications: Notifications) -> None: ...

    with pytest.raises(TypeError, match="matches several provided dependencies"):
        d.register_command_handler(Allocate, handler)
    d.provide(notifications=Notifications())  # by name wins over by type
    d.register_command_handler(Allocate, handler)
    with pytest.raises(ValueError, match="'notifications' is already provided"):
        d.provide(notifications=1)
    with pytest.raises(ValueError, match="type EmailNotifications is already provided"):
        d.provide(EmailNotifications())
    with pytest.raises(TypeError, match="needs instances to match by type"):
        d.provide(Notifications)


def test_event_handlers_take_dependencies_and_keep_their_identity(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    sent: list[str] = []
    d.provide(sent=sent)

    def on_noted(event: Noted, sent: list[str]) -> None:
        sent.append(event.text)

    assert d.register_handler(Noted, on_noted) is on_noted
    d.register_handler(Noted, on_noted)  # the same handler: still one registration
    assert d.dispatch(Noted("hi")) == 1
    assert sent == ["hi"]
    [registered] = d.handlers_for(Noted)
    assert registered == on_noted and registered.__qualname__ == on_noted.__qualname__
    with pytest.raises(TypeError, match="weak=True handlers cannot take dependencies"):
        d.register_handler(Allocate, on_noted, weak=True)
    assert d.unregister_handler(Noted, on_noted) is True
    assert d.handlers_for(Noted) == ()


def test_event_handler_errors_name_the_users_handler(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.provide(limit=0)

    def on_noted(event: Noted, limit: int) -> None:
        raise Boom(limit)

    d.register_handler(Noted, on_noted)
    with pytest.raises(Boom) as info:
        d.dispatch(Noted("x"))
    assert info.value.__notes__ == [
        f"domainbus: raised by handler {__name__}.{on_noted.__qualname__} for Noted"
    ]


# -- rule 7: middleware ----------------------------------------------------------------------


def test_middleware_order_and_results(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []
    d.register_command_handler(Allocate, allocate)  # before the middleware: wrapped too

    def outer(command: Any, call_next: Any) -> Any:
        log.append("outer in")
        result = call_next(command)
        log.append("outer out")
        return f"<{result}>"

    d.provide(log=log)

    def inner(command: Any, call_next: Any, log: list[str]) -> Any:
        log.append("inner in")
        return call_next(command)

    assert d.add_middleware(outer) is outer
    d.add_middleware(inner)
    d.register_command_handler(Cancel, lambda c: log.append("cancel") or "cancelled")
    assert d.execute(Allocate("x")) == "<batch-for-x>"
    assert d.execute(Cancel("y")) == "<cancelled>"
    assert log == [
        "outer in",
        "inner in",
        "outer out",
        "outer in",
        "inner in",
        "cancel",
        "outer out",
    ]


def test_clear_removes_handlers_and_keeps_dependencies_and_middleware(
    make_dispatcher: Any,
) -> None:
    d = make_dispatcher(nested="queue")
    log: list[str] = []
    notifications = Notifications()
    d.provide(notifications, log=log)

    def around(command: Any, call_next: Any, log: list[str]) -> Any:
        log.append("around")
        return call_next(command)

    def handler(command: Allocate, notifications: Notifications) -> str:
        notifications.sent.append(command.sku)
        d.dispatch(Noted(command.sku))
        return "ok"

    def on_noted(event: Noted, log: list[str]) -> None:
        log.append(f"noted {event.text}")

    d.add_middleware(around)
    d.register_command_handler(Allocate, handler)
    d.register_handler(Noted, on_noted)
    d.clear()
    assert d.command_handler_for(Allocate) is None
    assert d.handlers_for(Noted) == ()
    with pytest.raises(UnknownCommand):
        d.execute(Allocate("gone"))
    assert log == [] and notifications.sent == []
    # what was provided stays, for the handlers registered afterwards, and stays provided once
    with pytest.raises(ValueError, match="already provided"):
        d.provide(log=[])
    with pytest.raises(ValueError, match="already provided"):
        d.provide(Notifications())
    d.register_command_handler(Allocate, handler)
    d.register_handler(Noted, on_noted)
    # the middleware stays too: it wraps the handler registered after clear()
    assert d.execute(Allocate("x")) == "ok"
    assert log == ["around", "noted x"]
    assert notifications.sent == ["x"]
    d.clear()
    d.clear()  # clearing an empty dispatcher is fine
    assert d.command_handler_for(Allocate) is None


def test_middleware_can_short_circuit_and_errors_keep_the_note(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    def deny(command: Any, call_next: Any) -> Any:
        if isinstance(command, Cancel):
            raise PermissionError("no")
        return call_next(command)

    d.add_middleware(deny)
    d.register_command_handler(Allocate, allocate)
    d.register_command_handler(Cancel, lambda c: "never")
    assert d.execute(Allocate("x")) == "batch-for-x"
    with pytest.raises(PermissionError) as info:
        d.execute(Cancel("y"))
    assert info.value.__notes__[0].endswith("for Cancel")
    with pytest.raises(TypeError, match="keyword parameter named call_next"):
        d.add_middleware(lambda command, next_: next_(command))
    with pytest.raises(TypeError, match="middleware must be callable"):
        d.add_middleware(None)


# -- rule 8 and the GC ------------------------------------------------------------------------


def test_a_change_during_execute_applies_to_the_next_one(make_dispatcher: Any) -> None:
    d = make_dispatcher()

    def first(command: Allocate) -> str:
        d.unregister_command_handler(Allocate)
        d.register_command_handler(Allocate, other_allocate)
        return "first"

    d.register_command_handler(Allocate, first)
    assert d.execute(Allocate("x")) == "first"
    assert d.execute(Allocate("x")) == "other"


def test_a_dispatcher_in_a_cycle_with_its_handlers_is_collected(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    d.provide(dispatcher=d)

    def handler(command: Allocate, dispatcher: Any) -> Any:
        return dispatcher

    d.register_command_handler(Allocate, handler)
    d.add_middleware(lambda command, call_next: call_next(command))
    assert d.execute(Allocate("x")) is d
    ref = weakref.ref(d)
    del d
    gc.collect()
    assert ref() is None


def test_threads_execute_while_others_register(make_dispatcher: Any) -> None:
    """Executing from several threads while another (un)registers never crashes or mixes up
    handlers: every execute returns its own handler's result or raises UnknownCommand."""
    d = make_dispatcher()
    d.register_command_handler(Allocate, allocate)
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            d.register_command_handler(Cancel, lambda c: "cancelled")
            d.unregister_command_handler(Cancel)

    def work() -> None:
        try:
            for i in range(2_000):
                assert d.execute(Allocate(str(i))) == f"batch-for-{i}"
                try:
                    assert d.execute(Cancel("x")) == "cancelled"
                except UnknownCommand:
                    pass
        except BaseException as exc:
            errors.append(exc)

    churner = threading.Thread(target=churn)
    workers = [threading.Thread(target=work) for _ in range(3)]
    churner.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    churner.join()
    assert errors == []


def test_middleware_around_an_async_handler(make_dispatcher: Any) -> None:
    d = make_dispatcher()
    log: list[str] = []

    def around(command: Any, call_next: Any) -> Any:
        log.append("in")
        return call_next(command)  # the coroutine: execute_async awaits it

    async def async_handler(command: Allocate) -> str:
        await asyncio.sleep(0)
        log.append("handled")
        return command.sku

    d.add_middleware(around)
    d.register_command_handler(Allocate, async_handler)
    assert asyncio.run(d.execute_async(Allocate("x"))) == "x"
    assert log == ["in", "handled"]

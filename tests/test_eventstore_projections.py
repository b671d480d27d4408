"""Projections and their runner, on both backends and both stores: exactly once, even when the
runner is SIGKILLed; following new events; `domainbus replay`."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import domainbus
import eventstore_support as support
from domainbus.cli import main
from domainbus.eventstore import Projection, ProjectionRunner, handles
from eventstore_support import Deposited, Ledger, Withdrawn, deposits

store_kind, store_url_of = support.store_kind, support.store_url_of
make_store, store = support.make_store, support.store
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def use_backend(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domainbus, "Dispatcher", backend.Dispatcher)


def fill(store: Any, streams: int, per_stream: int) -> int:
    """Append `per_stream` deposits (amount 1) to each of `streams` streams, in batches."""
    for n in range(streams):
        events = [Deposited(account_id=f"s{n}", amount=1) for _ in range(per_stream)]
        store.append(f"s{n}", events, expected_version=0)
    return streams * per_stream


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_catch_up_applies_every_event_once_then_only_new_ones(store: Any) -> None:
    total = fill(store, 5, 7)
    projection = Ledger(store.connection)
    runner = ProjectionRunner(store, projection, page_size=4)
    pages: list[int] = []
    assert runner.catch_up(pages.append) == total
    assert pages == [4] * 8 + [3]
    assert projection.totals() == (total, total, total)
    last = list(store.read_all())[-1].position
    assert projection.position() == last
    assert runner.catch_up() == 0
    store.append("s0", [Withdrawn(account_id="s0", amount=5)], expected_version=7)
    assert runner.catch_up() == 1
    assert projection.totals() == (total + 1, total + 1, total - 5)
    runner.reset()
    assert projection.position() == 0 and projection.totals() == (0, 0, 0)
    assert runner.catch_up() == total + 1


class Failing(Ledger):
    """Fails on the first event with this amount."""

    name = "failing"
    fail_on: int | None = 13

    @handles(Deposited)
    def deposited(self, event: Deposited) -> None:
        if event.amount == self.fail_on:
            raise RuntimeError("handler bug")
        super().deposited(event)


def test_a_failing_handler_rolls_its_page_back_and_the_runner_resumes_there(store: Any) -> None:
    store.append("a", deposits(20, "a"), expected_version=0)
    projection = Failing(store.connection)
    runner = ProjectionRunner(store, projection, page_size=5)
    with pytest.raises(RuntimeError, match="handler bug") as caught:
        runner.catch_up()
    assert any("rolled back the page after position" in note for note in caught.value.__notes__)
    assert projection.totals()[0] == 10  # two whole pages, nothing of the third
    assert projection.position() == list(store.read_all())[9].position
    projection.fail_on = None
    assert runner.catch_up() == 10
    assert projection.totals() == (20, 20, sum(range(20)))


def test_the_runner_follows_new_events(make_store: Any) -> None:
    writer, reader = make_store(), make_store()
    fill(writer, 2, 3)
    projection = Ledger(reader.connection)
    runner = ProjectionRunner(reader, projection, poll_interval=0.05)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        for n in range(3):
            writer.append(f"new{n}", deposits(2, f"new{n}"), expected_version=0)
        checker = make_store()
        checking = Ledger(checker.connection)
        wait_for(lambda: checking.totals()[0] == 12 or bool(errors))
    finally:
        stop.set()
        thread.join(10)
    assert not errors and not thread.is_alive()
    assert checking.totals()[:2] == (12, 12)


class Named(Projection):
    @handles(Deposited)
    def one(self, event: Deposited) -> None:
        pass


def test_projection_names_and_bad_input(store: Any) -> None:
    assert Named(store.connection).projection_name.endswith("test_eventstore_projections.Named")
    assert Named(store.connection, name="custom").projection_name == "custom"
    with pytest.raises(TypeError, match=r"sqlite3\.Connection or a psycopg\.Connection"):
        Named(object())
    with pytest.raises(TypeError, match="expected a Projection"):
        ProjectionRunner(store, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="page_size"):
        ProjectionRunner(store, Named(store.connection), page_size=0)


# -- SIGKILL at random moments --------------------------------------------------------------


def _runner_child(url: str, ready: Any) -> None:
    """The forked child: catch the ledger up, slowly (killed by the parent meanwhile)."""
    store = support.open_store(url)
    runner = ProjectionRunner(store, Ledger(store.connection, pause=0.002), page_size=25)
    ready.set()
    runner.catch_up()
    os._exit(0)


def run_and_kill(url: str, kills: int, seed: int) -> int:
    """Fork the runner (it inherits the backend under test) and SIGKILL it after a random
    delay, `kills` times (or until it finishes); returns how many runs were killed."""
    rng = random.Random(seed)
    context = multiprocessing.get_context("fork")
    killed = 0
    while killed < kills:
        ready = context.Event()
        child = context.Process(target=_runner_child, args=(url, ready))
        child.start()
        try:
            assert ready.wait(30)
            time.sleep(rng.uniform(0, 0.05))
            if not child.is_alive():
                break  # it finished first: nothing left to kill
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join(30)
            assert child.exitcode == -signal.SIGKILL
            killed += 1
        finally:
            if child.is_alive():
                child.kill()
                child.join()
    return killed


def check_exactly_once(store: Any, kills: int, seed: int) -> None:
    fill(store, 20, 400)
    total = store.count_after(0)
    killed = run_and_kill(support_url(store), kills, seed)
    assert killed == kills, f"the runner finished after {killed} kills: make the work longer"
    projection = Ledger(store.connection)
    assert 0 < projection.totals()[0] < total  # the kills landed in the middle of the work
    ProjectionRunner(store, projection).catch_up()
    rows, distinct, amount = projection.totals()
    assert (rows, distinct, amount) == (total, total, total)
    all_ids = {str(s.event.event_id) for s in store.read_all()}
    applied = {row[0] for row in store.connection.execute("SELECT event_id FROM applied")}
    assert applied == all_ids
    assert projection.position() == list(store.read_all())[-1].position


def support_url(store: Any) -> str:
    if type(store).__name__ == "SqliteEventStore":
        path = store.connection.execute("PRAGMA database_list").fetchone()[2]
        return f"sqlite:///{path}"
    return str(store.conninfo)


def test_a_runner_sigkilled_20_times_applies_every_event_exactly_once(
    store: Any, backend: ModuleType
) -> None:
    check_exactly_once(store, kills=20, seed=20)


@pytest.mark.slow
def test_a_runner_sigkilled_100_times_applies_every_event_exactly_once(
    store: Any, backend: ModuleType
) -> None:
    pad = [Deposited(account_id="pad", amount=1) for _ in range(20_000)]
    store.append("pad", pad, expected_version=0)
    check_exactly_once(store, kills=100, seed=100)


# -- domainbus replay ---------------------------------------------------------------------------


def test_replay_command_catches_up_then_rebuilds_from_scratch(
    store: Any, store_url_of: str, capsys: pytest.CaptureFixture[str]
) -> None:
    total = fill(store, 3, 10)
    spec = "eventstore_support:ledger"
    assert main(["replay", store_url_of, "--projection", spec, "--page-size", "7"]) == 0
    out = capsys.readouterr().out
    assert f"replayed {total:,} events into 'ledger'" in out
    assert main(["replay", store_url_of, "--projection", spec]) == 0
    assert "replayed 0 events" in capsys.readouterr().out
    assert main(["replay", store_url_of, "--projection", spec, "--from-scratch"]) == 0
    assert f"replayed {total:,} events" in capsys.readouterr().out
    assert Ledger(store.connection).totals() == (total, total, total)


def test_replay_command_reports_bad_usage_in_one_line(
    store_url_of: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", store_url_of, "--projection", "nope"]) == 2
    assert "expected MODULE:NAME" in capsys.readouterr().err
    assert main(["replay", store_url_of, "--projection", "eventstore_support:CODEC"]) == 2
    assert "is not a Projection" in capsys.readouterr().err
    assert main(["replay", "mysql://x", "--projection", "eventstore_support:ledger"]) == 2
    assert "unknown store URL" in capsys.readouterr().err


def test_replay_command_stops_at_an_undecodable_event(
    store: Any, store_url_of: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store.append("a", deposits(3, "a"), expected_version=0)
    support.raw_insert(store, "a", 4, b"\xc1")
    assert main(["replay", store_url_of, "--projection", "eventstore_support:ledger"]) == 1
    assert "stream 'a' version 4: garbage" in capsys.readouterr().err


def test_a_reset_while_a_runner_catches_up_is_completed_not_clobbered(
    store: Any, make_store: Any
) -> None:
    total = fill(store, 4, 10)
    runner = ProjectionRunner(store, Ledger(store.connection), page_size=10)
    other_store = make_store()
    other = ProjectionRunner(other_store, Ledger(other_store.connection), page_size=10)
    resets: list[int] = []

    def reset_after_the_second_page(count: int) -> None:
        resets.append(count)
        if len(resets) == 2:  # `replay --from-scratch` from another process, say
            other.reset()

    runner.catch_up(reset_after_the_second_page)
    # the rebuild is complete: every event once, none lost to the reset
    assert runner.projection.totals() == (total, total, total)  # type: ignore[attr-defined]
    assert runner.projection.position() == list(store.read_all())[-1].position


def test_two_runners_of_one_projection_never_apply_a_page_twice(
    store: Any, make_store: Any
) -> None:
    total = fill(store, 3, 10)
    other_store = make_store()
    other = ProjectionRunner(other_store, Ledger(other_store.connection), page_size=10)
    runner = ProjectionRunner(store, Ledger(store.connection), page_size=10)
    calls: list[int] = []

    def the_other_runs_meanwhile(count: int) -> None:
        calls.append(count)
        if len(calls) == 1:
            assert other.catch_up() == total - 10  # from the first runner's tracked position

    assert runner.catch_up(the_other_runs_meanwhile) == 10
    assert runner.projection.totals() == (total, total, total)  # type: ignore[attr-defined]

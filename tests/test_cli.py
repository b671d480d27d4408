"""The `domainbus` command end to end, in subprocesses (`python -m domainbus`)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from domainbus.demo import codec

HANDLERS = '''
"""A user's handlers module: records every event id; fails on the FAIL_AT-th event it sees."""
import os

from domainbus import Dispatcher
from domainbus.demo import UserRegistered, codec
from domainbus.events import DomainEvent

dispatcher = Dispatcher()
seen = 0
log = open(os.environ["SEEN_FILE"], "a")
fail_at = int(os.environ.get("FAIL_AT", "-1"))


@dispatcher.handler(DomainEvent, priority=1)
def maybe_fail(event):
    global seen
    seen += 1
    if seen - 1 == fail_at:
        raise RuntimeError("mail server down")


@dispatcher.handler(DomainEvent)
def record(event):
    log.write(f"{event.event_id}\\n")
    log.flush()
'''


def domainbus(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "domainbus", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


def file_ids(path: Path) -> list[str]:
    return [str(e.event_id) for batch in codec.iter_batches(path) for e in batch]


def test_generate_run_fail_and_resume(backend: ModuleType, project: Path) -> None:
    env = {"DOMAINBUS_BACKEND": backend.__name__.rsplit(".", 1)[1], "SEEN_FILE": "seen.txt"}
    made = domainbus("generate", "log.bin", "--count", "2500", "--batch-size", "300", cwd=project)
    assert made.returncode == 0, made.stderr
    assert "wrote 2,500 events" in made.stdout

    args = ("run", "handlers:dispatcher", "log.bin", "--batch-size", "128")
    failed = domainbus(*args, cwd=project, env={**env, "FAIL_AT": "1234"})
    assert failed.returncode == 1
    assert "a handler failed on event 1234: RuntimeError('mail server down')" in failed.stderr
    resume = next(line for line in failed.stderr.splitlines() if "--start-at" in line).strip()
    assert resume.endswith("--start-at 1234")

    again = domainbus(*shlex.split(resume)[1:], cwd=project, env=env)
    assert again.returncode == 0, again.stderr
    assert "dispatched 1,266 events (2,532 handler calls)" in again.stdout
    seen = (project / "seen.txt").read_text().split()
    assert seen == file_ids(project / "log.bin")  # each event exactly once, in order


def table_rows(text: str, handler: str) -> list[list[str]]:
    """The cells of the metrics table's rows for `handler` (rich draws them with "│")."""
    return [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in text.splitlines()
        if handler in line
    ]


def test_run_prints_the_metrics_table_at_the_end(backend: ModuleType, project: Path) -> None:
    """`--metrics`: a table of each handler's calls and failures, slowest first, printed
    whether the run succeeded or failed."""
    env = {"DOMAINBUS_BACKEND": backend.__name__.rsplit(".", 1)[1], "SEEN_FILE": "seen.txt"}
    assert domainbus("generate", "log.bin", "--count", "300", cwd=project).returncode == 0
    args = ("run", "handlers:dispatcher", "log.bin", "--batch-size", "64", "--metrics")
    ok = domainbus(*args, cwd=project, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "handlers, slowest first" in ok.stdout
    rows = table_rows(ok.stdout, "handlers.record")
    assert rows and sum(int(row[2].replace(",", "")) for row in rows) == 300
    assert all(row[3] == "0" for row in rows)  # no failures

    failed = domainbus(*args, cwd=project, env={**env, "FAIL_AT": "100"})
    assert failed.returncode == 1
    assert (
        sum(int(row[3]) for row in table_rows(failed.stdout, "maybe_fail")) == 1
    )  # the failure is in the table

    plain = domainbus("run", "domainbus.demo:noop_dispatcher", "log.bin", cwd=project)
    assert "slowest first" not in plain.stdout  # only when asked for


def test_jsonl_dead_letters(project: Path) -> None:
    env = {"SEEN_FILE": "seen.txt"}
    assert domainbus("generate", "log.jsonl", "--count", "50", cwd=project).returncode == 0
    lines = (project / "log.jsonl").read_bytes().splitlines(keepends=True)
    lines.insert(10, b'{"type": "Nope"}\n')
    (project / "log.jsonl").write_bytes(b"".join(lines))

    stopped = domainbus("run", "handlers:dispatcher", "log.jsonl", cwd=project, env=env)
    assert stopped.returncode == 1
    assert "line 11, event 10: unknown-tag" in stopped.stderr
    assert "--start-at 11" in stopped.stderr
    assert len((project / "seen.txt").read_text().split()) == 10

    (project / "seen.txt").unlink()
    run = ("run", "handlers:dispatcher", "log.jsonl", "--dead-letter", "dead.jsonl")
    kept = domainbus(*run, cwd=project, env=env)
    assert kept.returncode == 0, kept.stderr
    assert "dispatched 50 events" in kept.stdout
    assert "1 invalid record(s) holding 1 event(s) written to dead.jsonl" in kept.stdout
    (dead,) = [json.loads(line) for line in (project / "dead.jsonl").read_text().splitlines()]
    assert (dead["reason"], dead["line"], dead["index"]) == ("unknown-tag", 11, 10)
    assert len((project / "seen.txt").read_text().split()) == 50


def test_a_dispatcher_factory_and_the_demo_codec(project: Path) -> None:
    assert (
        domainbus("generate", "log.bin", "--count", "10", "--types", "2", cwd=project).returncode
        == 0
    )
    run = domainbus(
        "run", "domainbus.demo:noop_dispatcher", "log.bin", "--start-at", "4", cwd=project
    )
    assert run.returncode == 0, run.stderr
    assert "dispatched 6 events (18 handler calls)" in run.stdout


def test_an_unreadable_stream_is_exit_1_without_a_resume_hint(project: Path) -> None:
    (project / "log.bin").write_bytes(b"\x00\x01 not a stream")
    run = ("run", "handlers:dispatcher", "log.bin", "--format", "msgpack")
    result = domainbus(*run, cwd=project, env={"SEEN_FILE": "seen.txt"})
    assert result.returncode == 1
    assert result.stderr == (
        "domainbus run: log.bin, byte offset 0: garbage: "
        "not a domainbus msgpack stream (missing header)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "handlers:dispatcher", "missing.bin"), "no such file: 'missing.bin'"),
        (("run", "handlers", "log.bin"), "expected MODULE:NAME"),
        (("run", "nowhere:dispatcher", "log.bin"), "cannot import module 'nowhere'"),
        (("run", "handlers:nobody", "log.bin"), "module 'handlers' has no attribute 'nobody'"),
        (("run", "handlers:os", "log.bin"), "handlers:os is not a dispatcher"),
        (("run", "handlers:dispatcher", "log.bin", "--format", "xml"), "unknown format 'xml'"),
        (("generate", "out.bin", "--count", "1", "--format", "xml"), "unknown format 'xml'"),
        (("generate", "out.bin", "--count", "1", "--types", "9"), "--types must be from 1 to 6"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    project: Path, args: tuple[str, ...], message: str
) -> None:
    (project / "log.bin").write_bytes(b"")
    result = domainbus(*args, cwd=project, env={"SEEN_FILE": "seen.txt"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_info_and_demo(tmp_path: Path) -> None:
    info = domainbus("info", cwd=tmp_path)
    assert info.returncode == 0
    assert "backend: " in info.stdout
    assert "extension: " in info.stdout
    demo = domainbus("demo", cwd=tmp_path)
    assert demo.returncode == 0
    assert demo.stdout.count("-> 3 handler calls") == 2
    assert "send_welcome_email" in demo.stdout


def test_bench_without_its_module_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from domainbus import cli

    monkeypatch.setitem(sys.modules, "domainbus.bench.cli", None)  # makes the import fail
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("domainbus bench: the benchmark module is not available")

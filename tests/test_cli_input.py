"""`domainbus run` and `generate` fed bad input and odd targets (issue 11 items 1-3, 6-12).

Most tests call `domainbus.cli.main` in this process (fast); the ones about what a fresh
process has loaded (`DOMAINBUS_BACKEND`, no events loaded) run `python -m domainbus`.
"""

from __future__ import annotations

import io
import itertools
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from domainbus import cli
from domainbus.codec import MAGIC
from domainbus.demo import codec as demo_codec

_names = itertools.count()

EAGER = '''
"""Targets that take the whole batch first, as a broker publisher does."""
from domainbus.demo import codec
from domainbus.{backend} import Dispatcher

inner = Dispatcher()
seen = []


@inner.handler(object)
def record(event):
    seen.append(event)
    if len(seen) == {fail_at} + 1:
        raise RuntimeError("poison")


class Wrapper:
    def dispatch_batch(self, events):
        return inner.dispatch_batch(list(events))


class DownBroker:
    def dispatch_batch(self, events):
        list(events)
        raise ConnectionError("broker is down")


wrapper = Wrapper()
broker = DownBroker()
outer = Dispatcher()
nested = Dispatcher()
nested.register_handler(object, lambda e: None)
third = Dispatcher()
thirds = []
outer_seen = []


@third.handler(object)
def fail_third(event):
    thirds.append(event)
    if len(thirds) == 3:
        raise RuntimeError("third")


@outer.handler(object)
def fan_out(event):
    outer_seen.append(event)
    if len(outer_seen) - 1 == {fail_at}:
        third.dispatch_batch([event, event, event])  # fails at its own index 2


empty = Dispatcher()


def make_dispatcher():
    raise RuntimeError("no database configured")
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def user_module(project: Path, backend_name: str, fail_at: int = -1) -> str:
    name = f"user_targets_{next(_names)}"
    source = EAGER.replace("{backend}", backend_name).replace("{fail_at}", str(fail_at))
    (project / f"{name}.py").write_text(source)
    return name


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def generate(path: Path, count: int, batch_size: int = 1024) -> None:
    demo_codec.write(path, _demo_events(count), batch_size=batch_size)


def _demo_events(count: int) -> list[Any]:
    from domainbus import demo

    return list(demo.generate_events(count, 6, 0))


def resume_hint(err: str) -> list[str]:
    line = next(line for line in err.splitlines() if "--start-at" in line)
    return shlex.split(line[line.index("domainbus") :])[1:]


def backend_name(backend: Any) -> str:
    return str(backend.__name__.rsplit(".", 1)[1])


# -- item 1: positions come from batch_index ---------------------------------------------------


def test_an_eager_target_resumes_at_the_failing_event(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(project / "log.bin", 3000)
    module = user_module(project, backend_name(backend), fail_at=1026)
    status, _, err = run(capsys, "run", f"{module}:wrapper", "log.bin")
    assert status == 1
    assert "a handler failed on event 1026: RuntimeError('poison')" in err
    assert resume_hint(err)[-2:] == ["--start-at", "1026"]


def test_a_target_raising_without_batch_index_resumes_at_its_batch(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(project / "log.bin", 3000)
    module = user_module(project, backend_name(backend))
    status, _, err = run(capsys, "run", f"{module}:broker", "log.bin", "--start-at", "100")
    assert status == 1
    assert "without a batch_index: none of the batch of events 100-1123" in err
    assert resume_hint(err)[-2:] == ["--start-at", "100"]  # not 1123: nothing was delivered


def test_a_nested_batch_does_not_confuse_the_position(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(project / "log.bin", 50)
    module = user_module(project, backend_name(backend), fail_at=5)
    status, _, err = run(capsys, "run", f"{module}:outer", "log.bin")
    assert status == 1
    assert "a handler failed on event 5" in err
    assert resume_hint(err)[-2:] == ["--start-at", "5"]  # the outer event, not the inner 2


# -- items 2 and 3: hostile records are skipped, not usage errors -----------------------------


def hostile_jsonl(project: Path) -> Path:
    lines = demo_codec.records.json_lines_bytes(_demo_events(6)).splitlines(keepends=True)
    lines.insert(2, msgspec.json.encode({"type": "X.v" + "7" * 5000}) + b"\n")
    lines.insert(4, b'{"type":"UserRegistered","user_id":' + b"[" * 5000 + b"]" * 5000 + b"}\n")
    path = project / "hostile.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_hostile_records_stop_with_a_hint_and_dead_letter(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile_jsonl(project)
    module = user_module(project, backend_name(backend))
    status, _, err = run(capsys, "run", f"{module}:nested", "hostile.jsonl")
    assert status == 1
    assert "line 3, event 2: unknown-tag" in err
    assert "skip 1 event(s)" in err
    status, _, err = run(capsys, *resume_hint(err))
    assert status == 1
    assert "line 5, event 4: garbage" in err  # the deep record, not a RecursionError
    status, out, err = run(
        capsys, "run", f"{module}:nested", "hostile.jsonl", "--dead-letter", "bad.jsonl"
    )
    assert status == 0, err
    assert "dispatched 6 events" in out
    assert "2 invalid record(s) holding 2 event(s) written to bad.jsonl" in out


# -- item 6: damaged frames -------------------------------------------------------------------


def damaged_stream(project: Path) -> Path:
    """Frames of 1,024 / 1,024 (damaged) / 952 events."""
    buffer = io.BytesIO()
    demo_codec.write(buffer, _demo_events(3000))
    data = bytearray(buffer.getvalue())
    start = len(MAGIC)
    first = struct.unpack_from("<I", data, start)[0]
    second = start + 4 + first
    size = struct.unpack_from("<I", data, second)[0]
    data[second + 4 + 3 : second + 4 + size] = b"\xc1" * (size - 3)  # keep its array header
    path = project / "damaged.bin"
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_frame_hint_gets_past_it(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged_stream(project)
    module = user_module(project, backend_name(backend))
    status, _, err = run(capsys, "run", f"{module}:nested", "damaged.bin")
    assert status == 1
    assert "event 1024: garbage: damaged frame" in err
    assert "skip 1,024 event(s)" in err
    hint = resume_hint(err)
    assert hint[-2:] == ["--start-at", "2048"]
    status, out, err = run(capsys, *hint)
    assert status == 0, err
    assert "dispatched 952 events" in out
    status, out, err = run(
        capsys, "run", f"{module}:nested", "damaged.bin", "--dead-letter", "bad.jsonl"
    )
    assert status == 0, err
    assert "dispatched 1,976 events" in out
    assert "1 invalid record(s) holding 1,024 event(s)" in out


def test_a_cut_off_file_says_so(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(project / "log.bin", 2000)
    data = (project / "log.bin").read_bytes()
    (project / "log.bin").write_bytes(data[:-100])
    module = user_module(project, backend_name(backend))
    status, _, err = run(capsys, "run", f"{module}:nested", "log.bin")
    assert status == 1
    assert "truncated: the file is cut off inside a frame (declaring 976 event(s)" in err
    assert "events before 1024 were dispatched; nothing after this point can be read" in err
    assert "--start-at" not in err
    status, out, err = run(capsys, "run", f"{module}:nested", "log.bin", "--dead-letter", "d.jsonl")
    assert status == 0
    assert "1 invalid record(s) holding 976 event(s)" in out
    assert "the stream ended early" in err


# -- item 7: what the file is not -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 4, "not an event stream: it starts with neither"),
        (MAGIC[:9], "shorter than the 20-byte header of a domainbus msgpack stream"),
    ],
)
def test_a_file_that_is_no_stream(
    project: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    (project / "junk.bin").write_bytes(content)
    status, _, err = run(capsys, "run", "domainbus.demo:noop_dispatcher", "junk.bin")
    assert status == 1
    assert message in err
    assert "JSON is malformed" not in err


def test_a_directory_is_not_missing(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "logs").mkdir()
    status, _, err = run(capsys, "run", "domainbus.demo:noop_dispatcher", "logs")
    assert status == 2
    assert err == "domainbus run: error: 'logs' is a directory, not an event file\n"


# -- item 8: classes and failing factories ----------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("domainbus.pure.dispatcher:Dispatcher", "is a class, not a dispatcher"),
        ("{module}:make_dispatcher", "make_dispatcher() raised RuntimeError"),
    ],
)
def test_bad_targets_are_one_line_and_exit_2(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    generate(project / "log.bin", 10)
    module = user_module(project, backend_name(backend))
    status, _, err = run(capsys, "run", target.format(module=module), "log.bin")
    assert status == 2
    assert err.count("\n") == 1
    assert message in err


# -- item 9: runs that do nothing say so ------------------------------------------------------


def test_start_at_past_the_end(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(project / "log.bin", 10)
    status, _, err = run(
        capsys, "run", "domainbus.demo:noop_dispatcher", "log.bin", "--start-at", "11"
    )
    assert status == 2
    assert "--start-at 11 is past the end of log.bin, which holds 10 event(s)" in err
    status, _, err = run(
        capsys, "run", "domainbus.demo:noop_dispatcher", "log.bin", "--start-at", "10"
    )
    assert status == 0
    assert "is the end of log.bin: nothing left" in err


@pytest.mark.parametrize("content", [b"", MAGIC, b"\n\n"])
def test_an_empty_file(project: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    (project / "empty.bin").write_bytes(content)
    status, _, err = run(capsys, "run", "domainbus.demo:noop_dispatcher", "empty.bin")
    assert status == 0
    assert "empty.bin holds no events; nothing was dispatched" in err


def test_a_dispatcher_without_handlers(
    backend: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate(project / "log.bin", 10)
    module = user_module(project, backend_name(backend))
    status, out, err = run(capsys, "run", f"{module}:empty", "log.bin")
    assert status == 0
    assert "dispatched 10 events (0 handler calls)" in out
    assert f"warning: no handler ran: {module}:empty has no handler for any of the 10" in err


# -- item 10: generate's format follows the name ----------------------------------------------


def test_generate_format_from_the_name(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "generate", "x.json", "--count", "3")
    assert status == 2
    assert "cannot tell the format from the name 'x.json'" in err
    assert not (project / "x.json").exists()
    assert run(capsys, "generate", "x.jsonl", "--count", "3")[0] == 0
    assert (project / "x.jsonl").read_bytes().startswith(b'{"type":')
    assert run(capsys, "generate", "x.json", "--count", "3", "--format", "jsonl")[0] == 0
    assert (project / "x.json").read_bytes().startswith(b'{"type":')
    assert run(capsys, "generate", "x.bin", "--count", "3")[0] == 0
    assert (project / "x.bin").read_bytes().startswith(MAGIC)
    assert run(capsys, "generate", "x.dat", "--count", "3")[0] == 2


# -- items 11 and 12: in a fresh process --------------------------------------------------------


def domainbus(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "domainbus", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_replaying_generate_output_names_the_codec(project: Path) -> None:
    generate(project / "log.bin", 5)
    (project / "mine.py").write_text(
        "from domainbus import Dispatcher\ndispatcher = Dispatcher()\n"
    )
    plain = domainbus("run", "mine:dispatcher", "log.bin", cwd=project)
    assert plain.returncode == 2
    assert "--codec domainbus.demo:codec" in plain.stderr
    named = domainbus(
        "run", "mine:dispatcher", "log.bin", "--codec", "domainbus.demo:codec", cwd=project
    )
    assert named.returncode == 0, named.stderr
    assert "dispatched 5 events" in named.stdout


def test_a_bad_backend_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for value in ("bogus", "Rusty"):
        result = domainbus("info", cwd=tmp_path, DOMAINBUS_BACKEND=value)
        assert result.returncode == 2
        assert result.stderr == (
            f"domainbus: error: DOMAINBUS_BACKEND must be 'rust', 'pure' or unset (empty), "
            f"not {value!r}\n"
        )


def test_a_bad_backend_raises_where_the_backend_is_used(tmp_path: Path) -> None:
    code = (
        "import domainbus, domainbus.pure\n"
        "try:\n    from domainbus import Dispatcher\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DOMAINBUS_BACKEND": "x"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == (
        "BackendError DOMAINBUS_BACKEND must be 'rust', 'pure' or unset (empty), not 'x'\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import domainbus

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == (
        f"domainbus {domainbus.__version__} ({domainbus.BACKEND} backend)\n"
    )


def test_the_progress_bar_shows_rate_and_eta() -> None:
    from rich.console import Console

    from domainbus.progress import progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with progress("replaying", total=1000, enabled=True, console=console) as advance:
        for _ in range(10):
            advance(50)
    shown = screen.getvalue()
    assert "replaying" in shown
    assert "events/s" in shown
    assert "eta" in shown
    with progress("quiet", total=10, enabled=False) as advance:
        advance(5)  # does nothing, shows nothing

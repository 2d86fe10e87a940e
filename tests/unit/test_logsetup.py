"""``-D [PATH]`` and ``STRATOVMM_LOG_LEVEL``: levels, the line layout, the destination."""

from __future__ import annotations

import logging
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratovmm.errors import ConfigError
from stratovmm.host.logsetup import TRACE, log_fds, log_level, setup_logging

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\w+) \[([^\]]+)\] ([\w.]+): (.*)$")


@pytest.fixture(autouse=True)
def _restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without the level variables and leaves the root logger as it was."""
    monkeypatch.delenv("STRATOVMM_LOG_LEVEL", raising=False)
    monkeypatch.delenv("STRATOVIRT_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_default_level_is_error() -> None:
    """Without either variable only errors are logged."""
    assert log_level() == logging.ERROR


@pytest.mark.parametrize(("name", "level"), [
    ("trace", TRACE), ("debug", logging.DEBUG), ("info", logging.INFO),
    ("warn", logging.WARNING), ("error", logging.ERROR), (" INFO ", logging.INFO),
])
def test_each_level_name_is_accepted(monkeypatch: pytest.MonkeyPatch, name: str,
                                     level: int) -> None:
    """trace, debug, info, warn and error (any case, spaces ignored) select their level."""
    monkeypatch.setenv("STRATOVMM_LOG_LEVEL", name)
    assert log_level() == level


def test_stratovirt_variable_is_read_when_ours_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """STRATOVIRT_LOG_LEVEL works as in StratoVirt; STRATOVMM_LOG_LEVEL wins when both are set."""
    monkeypatch.setenv("STRATOVIRT_LOG_LEVEL", "debug")
    assert log_level() == logging.DEBUG
    monkeypatch.setenv("STRATOVMM_LOG_LEVEL", "warn")
    assert log_level() == logging.WARNING


@pytest.mark.parametrize("var", ["STRATOVMM_LOG_LEVEL", "STRATOVIRT_LOG_LEVEL"])
def test_bad_level_is_an_error_naming_the_variable_it_came_from(
        monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    """A level name that does not exist is refused, naming the variable that held it."""
    monkeypatch.setenv(var, "verbose")
    with pytest.raises(ConfigError, match=f"^{var}: 'verbose' is not one of trace, debug"):
        log_level()


def test_line_has_time_level_thread_and_module(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each event is one line: time with milliseconds, level, thread name, module, message."""
    monkeypatch.setenv("STRATOVMM_LOG_LEVEL", "trace")
    path = tmp_path / "vmm.log"
    setup_logging(str(path))
    logging.getLogger("stratovmm.machine.microvm").info("VM shutting down: %s", "guest-reset")
    worker = threading.Thread(target=lambda: logging.getLogger("stratovmm.machine.vcpu").log(
        TRACE, "exit"), name="vcpu0")
    worker.start()
    worker.join()
    logging.getLogger("stratovmm.qmp").warning("throttled")
    lines = path.read_text().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    fields = [m.groups()[1:] for m in parsed if m]
    assert fields == [("INFO", "MainThread", "stratovmm.machine.microvm",
                       "VM shutting down: guest-reset"),
                      ("TRACE", "vcpu0", "stratovmm.machine.vcpu", "exit"),
                      ("WARN", "MainThread", "stratovmm.qmp", "throttled")]


def test_messages_and_tracebacks_stay_on_one_line(tmp_path: Path) -> None:
    """Line breaks inside an event are escaped, so guest data cannot forge a log line."""
    path = tmp_path / "vmm.log"
    setup_logging(str(path))
    log = logging.getLogger("stratovmm.test")
    log.error("guest sent %r", "x\n2026-01-01 00:00:00.000 ERROR [MainThread] fake: forged")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("handler failed")
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert "Traceback (most recent call last):\\n" in lines[1]
    assert lines[1].endswith("\\nRuntimeError: boom")
    assert all(LINE.match(line) for line in lines)


def test_level_filters_lower_events(tmp_path: Path) -> None:
    """At the default level, info and warnings are not written; errors are."""
    path = tmp_path / "vmm.log"
    setup_logging(str(path))
    logging.getLogger("stratovmm.x").info("quiet")
    logging.getLogger("stratovmm.x").warning("quiet too")
    logging.getLogger("stratovmm.x").error("loud")
    assert [line.split(": ", 1)[1] for line in path.read_text().splitlines()] == ["loud"]


def test_log_file_is_appended_to(tmp_path: Path) -> None:
    """-D PATH appends: an earlier run's lines stay."""
    path = tmp_path / "vmm.log"
    path.write_text("earlier run\n")
    setup_logging(str(path))
    logging.getLogger("stratovmm.x").error("this run")
    assert path.read_text().splitlines()[0] == "earlier run"
    assert path.read_text().splitlines()[1].endswith("stratovmm.x: this run")


def test_unwritable_log_path_is_an_error_naming_the_option(tmp_path: Path) -> None:
    """-D on a path that cannot be opened is a configuration error that names -D and the path."""
    bad = tmp_path / "missing-dir" / "vmm.log"
    with pytest.raises(ConfigError, match=f"^-D {re.escape(str(bad))}: No such file"):
        setup_logging(str(bad))


def test_without_a_path_the_log_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """-D alone (or no -D) logs to stderr."""
    setup_logging(None)
    logging.getLogger("stratovmm.x").error("to stderr")
    assert "stratovmm.x: to stderr" in capsys.readouterr().err


def test_log_fds_names_the_log_file(tmp_path: Path) -> None:
    """log_fds gives the fd of the -D file, where the SIGSYS reporter also writes."""
    path = tmp_path / "vmm.log"
    setup_logging(str(path))
    (fd,) = log_fds()
    assert Path(f"/proc/self/fd/{fd}").resolve() == path.resolve()


def test_setting_up_twice_replaces_the_handler(tmp_path: Path) -> None:
    """A second set-up closes the first destination instead of writing to both."""
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    setup_logging(str(first))
    setup_logging(str(second))
    logging.getLogger("stratovmm.x").error("once")
    assert first.read_text() == ""
    assert "once" in second.read_text()


# every character that ends a line for some reader (str.splitlines, terminals, editors) or
# that a terminal obeys (ESC sequences, backspace, DEL, C1 CSI), and the bidi controls that
# reorder what a reader sees
HOSTILE = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029,
                            *range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def test_every_control_character_in_a_message_is_escaped(tmp_path: Path) -> None:
    """C0, DEL, C1 (NEL included), U+2028/2029 and bidi controls from guest data are written
    as visible escapes: the event stays one line for every reader and hides nothing."""
    path = tmp_path / "vmm.log"
    setup_logging(str(path))
    logging.getLogger("stratovmm.test").error("guest wrote %s end", "a" + HOSTILE + "z")
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 1 and text.endswith("\n")
    line = text[:-1]
    assert len(line.splitlines()) == 1
    assert not set(line) & set(HOSTILE), [hex(ord(c)) for c in set(line) & set(HOSTILE)]
    assert LINE.match(line)
    assert "\\x1b" in line and "\\x7f" in line and "\\x85" in line and "\\x9b" in line
    assert "\\u2028" in line and "\\u2029" in line and "\\u202e" in line
    assert "\\t" in line and "\\n" in line and "\\r" in line
    assert line.endswith("z end")


def test_log_file_is_created_0600_and_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    """-D PATH creates the file 0600 (log lines quote guest and QMP data; open() would give
    0666 minus the umask); a file the user made beforehand keeps the mode they gave it."""
    path = tmp_path / "vmm.log"
    setup_logging(str(path))
    logging.getLogger("stratovmm.x").error("private")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shared = tmp_path / "shared.log"
    shared.touch(mode=0o640)
    shared.chmod(0o640)
    setup_logging(str(shared))
    logging.getLogger("stratovmm.x").error("appended")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    assert "appended" in shared.read_text()

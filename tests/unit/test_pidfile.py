"""``-pidfile`` and the ``-daemonize`` option checks, without starting a VM (unit tier)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratovmm.config.model import runtime_options
from stratovmm.errors import ConfigError
from stratovmm.host.daemon import PidFile, process_alive


@pytest.fixture
def sleeper() -> Iterator[int]:
    """The pid of a live process that is not us."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    """A pid that no longer runs (a reaped child)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_daemonize_refuses_logging_to_stderr() -> None:
    """-daemonize with -D and no path is refused (stderr is /dev/null once detached)."""
    with pytest.raises(ConfigError, match=r"^-D: logging to stderr is not allowed with -daemonize"):
        runtime_options({"daemonize": True, "D": True})


@pytest.mark.parametrize("switches", [
    {"daemonize": True, "D": "/tmp/vmm.log"},
    {"daemonize": True},
    {"D": True},
])
def test_allowed_combinations_pass(switches: dict[str, object]) -> None:
    """-daemonize with -D PATH or without -D, and -D alone without -daemonize, are fine."""
    runtime = runtime_options(switches)
    assert runtime.daemonize == bool(switches.get("daemonize"))


def test_pidfile_holds_our_pid_and_leaves_no_temporary(tmp_path: Path) -> None:
    """The pidfile says our pid and a newline; the temporary it was written through is gone."""
    pidfile = PidFile(str(tmp_path / "vm.pid"))
    pidfile.write()
    try:
        assert (tmp_path / "vm.pid").read_text() == f"{os.getpid()}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.pid"]
    finally:
        pidfile.remove()
    assert not (tmp_path / "vm.pid").exists()


def test_relative_pidfile_is_removed_even_after_a_chdir(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative -pidfile is made absolute at start, so removal still finds it."""
    monkeypatch.chdir(tmp_path)
    pidfile = PidFile("vm.pid")
    pidfile.write()
    monkeypatch.chdir("/")
    pidfile.remove()
    assert not (tmp_path / "vm.pid").exists()


def test_pidfile_naming_a_live_process_is_refused(tmp_path: Path, sleeper: int) -> None:
    """A pidfile that names another running process is left alone and start-up is refused."""
    path = tmp_path / "vm.pid"
    path.write_text(f"{sleeper}\n")
    with pytest.raises(ConfigError, match=f"already names running process {sleeper}"):
        PidFile(str(path)).write()
    assert path.read_text() == f"{sleeper}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.pid"]


@pytest.mark.parametrize("content", ["{dead}\n", "not a pid\n", ""])
def test_stale_pidfile_is_replaced(tmp_path: Path, content: str) -> None:
    """A pidfile naming a dead process (or nothing readable) is replaced by ours."""
    path = tmp_path / "vm.pid"
    path.write_text(content.format(dead=dead_pid()))
    pidfile = PidFile(str(path))
    pidfile.write()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        pidfile.remove()


def test_remove_leaves_a_pidfile_someone_else_wrote(tmp_path: Path) -> None:
    """If another process replaced the file meanwhile, ours is not the one to delete."""
    path = tmp_path / "vm.pid"
    pidfile = PidFile(str(path))
    pidfile.write()
    path.unlink()
    path.write_text("12345\n")
    pidfile.remove()
    assert path.read_text() == "12345\n"


def test_zombie_is_not_alive() -> None:
    """A process that exited but was not reaped yet does not hold a pidfile."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, still a zombie
        assert Path(f"/proc/{proc.pid}").exists()
        assert not process_alive(proc.pid)
    finally:
        proc.wait()


def test_live_and_dead_processes(sleeper: int) -> None:
    """process_alive: a running process yes, a reaped one and pid 0 no."""
    assert process_alive(sleeper)
    assert not process_alive(dead_pid())
    assert not process_alive(0)


def test_symlink_at_a_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """A symlink planted where the temporary file could be made (the old fixed name, with our
    pid) is never written through: the file it points to stays as it was."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / f".vm.pid.{os.getpid()}.tmp").symlink_to(victim)
    pidfile = PidFile(str(tmp_path / "vm.pid"))
    pidfile.write()
    try:
        assert victim.read_text() == "precious\n"
        assert (tmp_path / "vm.pid").read_text() == f"{os.getpid()}\n"
    finally:
        pidfile.remove()


def test_symlink_at_the_pidfile_path_is_replaced_not_followed(tmp_path: Path,
                                                              sleeper: int) -> None:
    """A symlink at the pidfile's path, even to a file naming a live process, is neither read
    nor written through: it is replaced by a regular 0600 file holding our pid."""
    victim = tmp_path / "victim"
    victim.write_text(f"{sleeper}\n")
    path = tmp_path / "vm.pid"
    path.symlink_to(victim)
    pidfile = PidFile(str(path))
    pidfile.write()
    try:
        assert victim.read_text() == f"{sleeper}\n"
        assert not path.is_symlink() and path.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        pidfile.remove()
    assert not path.exists() and victim.exists()

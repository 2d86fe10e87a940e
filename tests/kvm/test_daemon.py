"""``-daemonize`` and ``-pidfile`` with the real VMM and tiny guests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procvm import (
    FORBIDDEN_TRIGGER,
    install_forbidden_plugin,
    no_core_dumps,
    start_vmm,
    thread_seccomp_modes,
    tiny_guest,
    vmm_command,
)

from stratovmm.host.daemon import process_alive

pytestmark = pytest.mark.usefixtures("kvm_available")


def run(args: list[str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``stratovmm ARGS`` with stdout/stderr captured: returns only once both pipes are closed."""
    return subprocess.run(vmm_command(*args), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, preexec_fn=no_core_dumps,
                          env={**os.environ, "STRATOVMM_LOG_LEVEL": "info"})


def wait_until(condition: object, timeout: float = 10.0) -> bool:
    """Poll ``condition()`` until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """Pids of daemons a test started; any still running at the end gets SIGKILL."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_daemon(tmp_path: Path, daemons: list[int], *extra: str) -> int:
    """Start the looping guest with -daemonize -pidfile; returns the daemon's pid."""
    pidfile = tmp_path / "vm.pid"
    proc = run(["-daemonize", "-pidfile", str(pidfile), "-kernel", str(tiny_guest("loop")),
                "-D", str(tmp_path / "vmm.log"), *extra], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    pid = int(pidfile.read_text())
    daemons.append(pid)
    return pid


def test_daemonize_returns_with_the_vm_running_detached(tmp_path: Path,
                                                        daemons: list[int]) -> None:
    """The command returns 0 (pipes closed) while the VM runs on: pidfile names it, it leads
    its own session, its stdio is /dev/null and the filter is on."""
    started = time.monotonic()
    pid = start_daemon(tmp_path, daemons)
    assert time.monotonic() - started < 20
    assert (tmp_path / "vm.pid").read_text() == f"{pid}\n"
    assert process_alive(pid)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == pid                       # session id: setsid() made it a leader
    assert int(stat[1]) != os.getpid()               # not our child: the parent has exited
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert set(thread_seccomp_modes(pid).values()) == {2}


def test_sigterm_ends_the_daemon_and_removes_the_pidfile(tmp_path: Path,
                                                         daemons: list[int]) -> None:
    """SIGTERM to a running daemon: orderly shutdown (logged), process gone, pidfile removed."""
    pid = start_daemon(tmp_path, daemons)
    log = tmp_path / "vmm.log"
    assert wait_until(lambda: "seccomp filter on" in log.read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not process_alive(pid))
    assert not (tmp_path / "vm.pid").exists()
    # "seccomp filter on" comes just before the vCPUs start: a SIGTERM in between is the
    # same orderly shutdown, logged by the pre-run handler
    assert re.search(r"VM shutting down: host-signal \(signal SIGTERM( before the vCPUs"
                     r" started)?\)", log.read_text())


def test_sigterm_right_after_the_shell_returns_still_removes_the_pidfile(
        tmp_path: Path, daemons: list[int]) -> None:
    """SIGTERM the moment the pidfile appears (the VM may not run yet) is an orderly end too."""
    pid = start_daemon(tmp_path, daemons)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not process_alive(pid))
    assert not (tmp_path / "vm.pid").exists()
    assert "VM shutting down: host-signal (signal SIGTERM" in (tmp_path / "vmm.log").read_text()


def test_guest_reset_ends_the_daemon_and_removes_the_pidfile(tmp_path: Path) -> None:
    """A guest that resets right away ends the daemon, which removes its pidfile."""
    log = tmp_path / "vmm.log"
    proc = run(["-daemonize", "-pidfile", "vm.pid", "-kernel", str(tiny_guest("reset")),
                "-D", str(log)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert wait_until(lambda: "guest-reset" in log.read_text())
    written = re.search(r"pid (\d+) written to", log.read_text())
    assert written is not None
    pid = int(written.group(1))
    assert wait_until(lambda: not process_alive(pid))
    assert not (tmp_path / "vm.pid").exists()


def test_setup_error_in_the_daemon_reaches_the_terminal(tmp_path: Path) -> None:
    """An error while the forked child builds the VM is printed on the caller's stderr and
    becomes the caller's exit status; no pidfile is left."""
    proc = run(["-daemonize", "-pidfile", "vm.pid", "-kernel", str(tiny_guest("loop")),
                "-mem-path", str(tmp_path / "no-such-dir" / "ram")], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"stratovmm: -mem-path {tmp_path}/no-such-dir/ram:")
    assert not (tmp_path / "vm.pid").exists()


def test_daemon_killed_during_setup_is_reported_by_the_parent(tmp_path: Path) -> None:
    """If the forked child dies of a signal before it is ready, the waiting parent says so on
    stderr and exits 128+signal."""
    env = {**install_forbidden_plugin(tmp_path / "site"), FORBIDDEN_TRIGGER: "kill-in-setup"}
    proc = subprocess.run(vmm_command("-daemonize", "-kernel", str(tiny_guest("loop"))),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})
    assert proc.returncode == 128 + signal.SIGKILL
    assert proc.stderr == "stratovmm: the VM process was killed by SIGKILL during set-up\n"


def test_daemonize_refuses_serial_stdio(tmp_path: Path) -> None:
    """-daemonize with -serial stdio is a clear configuration error (the serial plugin's check)."""
    proc = run(["-daemonize", "-kernel", str(tiny_guest("loop")), "-serial", "stdio"], tmp_path)
    assert proc.returncode == 2
    assert "-serial stdio: not allowed with -daemonize" in proc.stderr


def test_daemonize_refuses_logging_to_stderr(tmp_path: Path) -> None:
    """-daemonize with -D and no path is a clear configuration error."""
    proc = run(["-daemonize", "-kernel", str(tiny_guest("loop")), "-D"], tmp_path)
    assert proc.returncode == 2
    assert "-D: logging to stderr is not allowed with -daemonize" in proc.stderr


def test_second_vm_with_the_same_pidfile_is_refused(tmp_path: Path, daemons: list[int]) -> None:
    """While a VM holds the pidfile, another VMM given the same path refuses to start."""
    pid = start_daemon(tmp_path, daemons)
    proc = run(["-daemonize", "-pidfile", "vm.pid", "-kernel", str(tiny_guest("loop"))],
               tmp_path)
    assert proc.returncode == 2
    assert f"already names running process {pid}" in proc.stderr
    assert (tmp_path / "vm.pid").read_text() == f"{pid}\n"
    assert process_alive(pid)


def test_stale_pidfile_is_taken_over(tmp_path: Path, daemons: list[int]) -> None:
    """A pidfile left by a dead process is replaced by the new daemon's pid."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "vm.pid").write_text(f"{dead.pid}\n")
    pid = start_daemon(tmp_path, daemons)
    assert pid != dead.pid and process_alive(pid)


def test_pidfile_without_daemonize_is_removed_on_sigterm(tmp_path: Path) -> None:
    """In the foreground too, the pidfile names the VMM while it runs and goes on exit 0."""
    with start_vmm(["-pidfile", "vm.pid", "-kernel", str(tiny_guest("loop")), "-serial", "stdio"],
                   tmp_path) as vmm:
        vmm.wait_for_output("L")
        assert (tmp_path / "vm.pid").read_text() == f"{vmm.pid}\n"
        assert vmm.terminate() == 0
    assert not (tmp_path / "vm.pid").exists()


def test_daemon_serves_qmp_and_quit_removes_the_pidfile(tmp_path: Path,
                                                        daemons: list[int]) -> None:
    """After -daemonize returns, the QMP socket answers; quit ends the VM (SHUTDOWN
    host-qmp-quit) and the pidfile and socket are gone."""
    from stratovmm.testing.qmp import QmpTestClient

    sock = tmp_path / "qmp.sock"
    pid = start_daemon(tmp_path, daemons, "-api-channel", f"unix:{sock}")
    with QmpTestClient(str(sock), timeout=10) as qmp:
        assert "QMP" in qmp.greeting
        assert qmp.command("query-status")["return"]["status"] == "running"
        assert qmp.command("quit")["return"] == {}
        assert qmp.wait_event("SHUTDOWN", 10)["data"]["reason"] == "host-qmp-quit"
    assert wait_until(lambda: not process_alive(pid))
    assert not (tmp_path / "vm.pid").exists()
    assert not sock.exists()

"""The seccomp filter on a real VMM running a tiny guest.

A test-only plugin (``forbidden_plugin/``, installed through an entry point on
``PYTHONPATH``) makes one forbidden call from ``vmm_vm_started``, i.e. after
the filter went on, exactly where a compromised device model would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
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

pytestmark = pytest.mark.usefixtures("kvm_available")

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ERROR \[(?:\S+ )?tid \d+\]"
                      r" stratovmm\.host\.sandbox: seccomp: forbidden system call (\S+) \(\d+\)"
                      r".*; killing the process$", re.M)

# trigger -> the system call the filter stops
FORBIDDEN = {
    "execve": "execve",
    "thread-execve": "execve",
    "fork": "clone",
    "ioctl": "ioctl",
    "open-write": "openat",
    "socket": "socket",
}


def run_with_plugin(tmp_path: Path, trigger: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Boot the resetting tiny guest with the test plugin told to make call ``trigger``."""
    env = {**install_forbidden_plugin(tmp_path / "site"), FORBIDDEN_TRIGGER: trigger,
           "STRATOVMM_TEST_FORBIDDEN_PATH": str(tmp_path / "written")}
    return subprocess.run(vmm_command("-kernel", str(tiny_guest("reset")), "-serial", "stdio",
                                      *extra),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, **env}, preexec_fn=no_core_dumps)


@pytest.mark.parametrize("trigger", sorted(FORBIDDEN))
def test_forbidden_call_kills_the_vmm_and_is_logged(tmp_path: Path, trigger: str) -> None:
    """A call outside the allow-list, made after set-up, kills the VMM with SIGSYS and one log
    line naming the call; the call itself never ran.  Installed plugins whose devices are not
    configured (blk allows read-write opens for blockdev-add, vsock unix sockets) add nothing."""
    proc = run_with_plugin(tmp_path, trigger)
    assert proc.returncode == -signal.SIGSYS, (proc.returncode, proc.stderr)
    names = LOG_LINE.findall(proc.stderr)
    assert names and names[0] == FORBIDDEN[trigger], proc.stderr
    assert "FORBIDDEN-CALL-RETURNED" not in proc.stderr
    assert not (tmp_path / "written").exists()


@pytest.mark.parametrize("trigger", sorted(FORBIDDEN))
def test_same_call_runs_with_disable_seccomp(tmp_path: Path, trigger: str) -> None:
    """With -disable-seccomp the same call returns and the VM ends normally: the filter is
    what killed the VMM above."""
    proc = run_with_plugin(tmp_path, trigger, "-disable-seccomp")
    assert proc.returncode == 0, proc.stderr
    assert "FORBIDDEN-CALL-RETURNED" in proc.stderr
    assert not LOG_LINE.search(proc.stderr)


def test_plugin_installed_but_idle_does_not_disturb_the_vm(tmp_path: Path) -> None:
    """With the test plugin loaded and no trigger, the filtered VM boots and resets cleanly."""
    proc = run_with_plugin(tmp_path, "")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("X")


def test_forbidden_call_is_logged_to_the_log_file(tmp_path: Path) -> None:
    """With -D PATH the reporter writes the same line to the log file."""
    log = tmp_path / "vmm.log"
    proc = run_with_plugin(tmp_path, "execve", "-D", str(log))
    assert proc.returncode == -signal.SIGSYS
    assert LOG_LINE.findall(log.read_text()) == ["execve"]


def test_every_thread_of_a_running_vm_is_filtered(tmp_path: Path) -> None:
    """Main thread, both vCPU threads and the iothread all run under the filter (Seccomp: 2)."""
    args = ["-smp", "2", "-iothread", "id=io0", "-kernel", str(tiny_guest("loop")),
            "-serial", "stdio"]
    with start_vmm(args, tmp_path) as vmm:
        vmm.wait_for_output("L")
        modes = thread_seccomp_modes(vmm.pid)
        assert len(modes) >= 4, modes          # main, vcpu0, vcpu1, iothread-io0
        assert set(modes.values()) == {2}, modes
        assert vmm.terminate() == 0


def test_disable_seccomp_leaves_every_thread_unfiltered(tmp_path: Path) -> None:
    """-disable-seccomp: no thread has a filter."""
    args = ["-disable-seccomp", "-kernel", str(tiny_guest("loop")), "-serial", "stdio"]
    with start_vmm(args, tmp_path) as vmm:
        vmm.wait_for_output("L")
        assert set(thread_seccomp_modes(vmm.pid).values()) == {0}
        assert vmm.terminate() == 0


def test_sigterm_ends_a_filtered_vm_with_status_0(tmp_path: Path) -> None:
    """The orderly SIGTERM shutdown (teardown, logging, exit) needs nothing outside the list."""
    log = tmp_path / "vmm.log"
    with start_vmm(["-kernel", str(tiny_guest("loop")), "-serial", "stdio", "-D", str(log)],
                   tmp_path, env={"STRATOVMM_LOG_LEVEL": "info"}) as vmm:
        vmm.wait_for_output("L")
        assert vmm.terminate() == 0
    text = log.read_text()
    assert "seccomp filter on" in text
    assert "VM shutting down: host-signal (signal SIGTERM)" in text
    assert "forbidden system call" not in text

"""The seccomp filter with the Linux test guest: it boots under the filter, and the same VM
dies when a plugin makes a forbidden call."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from procvm import (
    FORBIDDEN_TRIGGER,
    install_forbidden_plugin,
    start_vmm,
    thread_seccomp_modes,
)

from stratovmm.testing.guest import GUEST_TIMEOUT, GuestRun, boot_args


def test_linux_boots_and_reboots_under_the_filter(guest: Path, tmp_path: Path,
        boot_lock: None) -> None:
    """2 vCPUs, serial console, a guest command and the reboot all run with every VMM
    thread filtered, and no call outside the allow-list is made."""
    env = install_forbidden_plugin(tmp_path / "site")
    args = boot_args(guest, command="echo filtered-$((6*7))", smp=2)
    with start_vmm(args, tmp_path, env=env) as vmm:
        seen: dict[int, int] = {}
        deadline = time.monotonic() + GUEST_TIMEOUT
        while vmm.proc.poll() is None and time.monotonic() < deadline:
            if "GUEST-READY" in vmm.stdout() and not seen:
                seen = thread_seccomp_modes(vmm.pid)
            time.sleep(0.2)
        rc = vmm.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        run = GuestRun(rc, vmm.stdout(), vmm.stderr())
    assert run.returncode == 0, run.stderr
    assert run.ready
    assert run.command_output.strip() == "filtered-42"
    assert len(seen) >= 3 and set(seen.values()) == {2}, seen   # main + 2 vCPUs
    assert "forbidden system call" not in run.stderr


def test_same_linux_vm_is_killed_by_a_forbidden_call(guest: Path, tmp_path: Path,
        boot_lock: None) -> None:
    """The same configuration, with the test plugin calling execve once the VM runs, ends
    with SIGSYS and the reporter's line naming execve."""
    env = {**install_forbidden_plugin(tmp_path / "site"), FORBIDDEN_TRIGGER: "execve"}
    args = boot_args(guest, command="echo filtered", smp=2)
    with start_vmm(args, tmp_path, env=env) as vmm:
        rc = vmm.proc.wait(timeout=GUEST_TIMEOUT)
        stderr = vmm.stderr()
    assert rc == -signal.SIGSYS, stderr
    assert "seccomp: forbidden system call execve (59)" in stderr

"""System calls injected into a running, filtered VMM (ptrace), as an attacker who took over
its code would make them: the filter allows what the configured devices need and kills the
process for anything else, whatever other plugins are installed.

Each VMM runs the halting tiny guest; the call is injected into its vCPU thread (blocked in
KVM_RUN), which afterwards carries on as if nothing happened.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from procvm import Background, start_vmm, tiny_guest
from ptraceinject import AT_FDCWD, NR_OPENAT, NR_SOCKET, Data, inject_syscall, thread_named

pytestmark = pytest.mark.usefixtures("kvm_available")

REPORT = re.compile(r"seccomp: forbidden system call (\S+) \(\d+\).*; killing the process$",
                    re.M)
CREATE_TRUNCATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


@contextmanager
def vmm(tmp_path: Path, *extra: str) -> Iterator[Background]:
    """A filtered VMM with the halting tiny guest, the serial console and ``extra``."""
    with start_vmm(["-kernel", str(tiny_guest("loop")), "-serial", "stdio", *extra],
                   tmp_path) as proc:
        proc.wait_for_output("L")
        yield proc


def blk_and_qmp(tmp_path: Path) -> list[str]:
    """A drive and a QMP socket: blk's blockdev-add rule is in the filter."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    return ["-drive", f"id=d0,file={disk}", "-api-channel", f"unix:{tmp_path / 'qmp.sock'}"]


def vsock(tmp_path: Path) -> list[str]:
    """A vsock bridge: vsock's socket rule is in the filter."""
    return ["-device", f"vsock,id=v0,guest-cid=3,uds-path={tmp_path / 'v.sock'}"]


def openat(proc: Background, path: Path, flags: int) -> int | None:
    """``openat(AT_FDCWD, path, flags, 0644)`` made by the VMM's vCPU thread."""
    return inject_syscall(thread_named(proc.pid, "vcpu0"), NR_OPENAT,
                          [AT_FDCWD, Data(os.fsencode(path) + b"\0"), flags, 0o644])


def make_socket(proc: Background, family: int) -> int | None:
    """``socket(family, SOCK_STREAM, 0)`` made by the VMM's vCPU thread."""
    return inject_syscall(thread_named(proc.pid, "vcpu0"), NR_SOCKET,
                          [family, socket.SOCK_STREAM, 0])


def assert_killed_for(proc: Background, name: str) -> None:
    """The VMM died of SIGSYS after its reporter named ``name``."""
    assert proc.proc.wait(20) == -signal.SIGSYS, proc.stderr()
    assert REPORT.findall(proc.stderr()) == [name], proc.stderr()


@pytest.mark.parametrize("what", ["create", "truncate"])
def test_blockdev_add_rule_does_not_let_openat_create_or_truncate(tmp_path: Path,
                                                                  what: str) -> None:
    """With blk and QMP (blockdev-add opens images while the VM runs), openat with
    O_CREAT|O_TRUNC kills the VMM: a new file is not created, an existing one keeps its data."""
    target = tmp_path / "victim"
    if what == "truncate":
        target.write_text("precious")
    with vmm(tmp_path, *blk_and_qmp(tmp_path)) as proc:
        openat(proc, target, CREATE_TRUNCATE)
        assert_killed_for(proc, "openat")
    if what == "truncate":
        assert target.read_text() == "precious"
    else:
        assert not target.exists()


def test_blockdev_add_rule_lets_an_existing_image_open_read_write(tmp_path: Path) -> None:
    """The same VMM may open an existing file O_RDWR (what blockdev-add does) and runs on."""
    image = tmp_path / "hot.img"
    image.write_bytes(bytes(4096))
    with vmm(tmp_path, *blk_and_qmp(tmp_path)) as proc:
        fd = openat(proc, image, os.O_RDWR | os.O_CLOEXEC)
        assert fd is not None and fd >= 0, (fd, proc.stderr())
        assert os.path.samefile(f"/proc/{proc.pid}/fd/{fd}", image)
        assert proc.terminate() == 0, proc.stderr()


def test_vsock_rule_does_not_let_socket_reach_the_network(tmp_path: Path) -> None:
    """With vsock configured, socket(AF_INET) kills the VMM."""
    with vmm(tmp_path, *vsock(tmp_path)) as proc:
        make_socket(proc, socket.AF_INET)
        assert_killed_for(proc, "socket")


def test_vsock_rule_lets_a_unix_stream_socket_be_made(tmp_path: Path) -> None:
    """The same VMM may make a unix stream socket (what the bridge does) and runs on."""
    with vmm(tmp_path, *vsock(tmp_path)) as proc:
        fd = make_socket(proc, socket.AF_UNIX)
        assert fd is not None and fd >= 0, (fd, proc.stderr())
        assert proc.terminate() == 0, proc.stderr()


@pytest.mark.parametrize("call", ["open-read-write", "unix-socket"])
def test_plugins_without_configured_devices_add_nothing(tmp_path: Path, call: str) -> None:
    """blk and vsock are installed but neither a drive, a vsock nor QMP is configured: an
    O_RDWR open and a unix socket, each allowed above, kill this VMM."""
    image = tmp_path / "hot.img"
    image.write_bytes(bytes(4096))
    with vmm(tmp_path) as proc:
        if call == "open-read-write":
            openat(proc, image, os.O_RDWR | os.O_CLOEXEC)
            assert_killed_for(proc, "openat")
        else:
            make_socket(proc, socket.AF_UNIX)
            assert_killed_for(proc, "socket")


def test_injected_calls_run_without_the_filter(tmp_path: Path) -> None:
    """Control: with -disable-seccomp the same injections run (the file is created, an inet
    socket is made) and the VMM carries on, so the kills above are the filter's doing."""
    target = tmp_path / "victim"
    with vmm(tmp_path, "-disable-seccomp", *blk_and_qmp(tmp_path), *vsock(tmp_path)) as proc:
        fd = openat(proc, target, CREATE_TRUNCATE)
        assert fd is not None and fd >= 0, (fd, proc.stderr())
        sock = make_socket(proc, socket.AF_INET)
        assert sock is not None and sock >= 0
        assert proc.terminate() == 0, proc.stderr()
    assert target.exists()

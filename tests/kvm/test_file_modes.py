"""Local users reach the VMM only through file modes: every socket and file a real VMM
creates is 0600 even under ``umask 0`` (write access to the QMP socket is full control of
the VM; the console and vsock sockets lead into the guest)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from procvm import start_vmm, tiny_guest

pytestmark = pytest.mark.usefixtures("kvm_available")


def mode(path: Path) -> int:
    """The permission bits of ``path`` itself (not of a symlink's target)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_sockets_log_and_pidfile_are_0600_under_umask_0(tmp_path: Path) -> None:
    """QMP, console and vsock sockets, the -D log file and the pidfile: mode 0600 each,
    with the VMM started under umask 0 (which would make them 0777 and 0666)."""
    files = {"qmp": tmp_path / "qmp.sock", "console": tmp_path / "console.sock",
             "vsock": tmp_path / "vsock.sock", "log": tmp_path / "vmm.log",
             "pidfile": tmp_path / "vm.pid"}
    args = ["-kernel", str(tiny_guest("loop")), "-serial", "stdio",
            "-api-channel", f"unix:{files['qmp']}",
            "-chardev", f"id=con0,path={files['console']}",
            "-device", f"vsock,id=vsock0,guest-cid=3,uds-path={files['vsock']}",
            "-D", str(files["log"]), "-pidfile", str(files["pidfile"])]
    with start_vmm(args, tmp_path, env={"STRATOVMM_LOG_LEVEL": "info"}, umask=0) as vmm:
        vmm.wait_for_output("L")
        deadline = time.monotonic() + 10
        while not files["pidfile"].exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        kinds = {name: stat.S_IFMT(os.lstat(path).st_mode) for name, path in files.items()}
        modes = {name: oct(mode(path)) for name, path in files.items()}
        assert vmm.terminate() == 0, vmm.stderr()
    assert modes == {name: "0o600" for name in files}, modes
    assert kinds == {"qmp": stat.S_IFSOCK, "console": stat.S_IFSOCK, "vsock": stat.S_IFSOCK,
                     "log": stat.S_IFREG, "pidfile": stat.S_IFREG}

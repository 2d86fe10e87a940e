"""``private_listener``: the one way the VMM makes a listening unix socket (QMP, console,
vsock) gives a 0600 file whatever the umask."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from stratovmm.host.unixsock import private_listener


def test_socket_file_is_0600_under_umask_0(tmp_path: Path) -> None:
    """With umask 0 a plain bind makes a 0777 socket file; ours is 0600 and accepts clients."""
    old = os.umask(0)
    try:
        plain = socket.socket(socket.AF_UNIX)
        plain.bind(str(tmp_path / "plain.sock"))
        sock = private_listener(str(tmp_path / "vmm.sock"), 4)
    finally:
        os.umask(old)
    plain.close()
    assert stat.S_IMODE(os.lstat(tmp_path / "plain.sock").st_mode) == 0o777
    st = os.lstat(tmp_path / "vmm.sock")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with sock, socket.socket(socket.AF_UNIX) as client:
        assert not sock.getblocking() and not sock.get_inheritable()
        client.connect(str(tmp_path / "vmm.sock"))
        conn, _ = sock.accept()
        conn.close()


def test_bind_failure_is_an_oserror_and_leaks_no_fd(tmp_path: Path) -> None:
    """bind() into a missing directory raises OSError; the socket is closed."""
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        private_listener(str(tmp_path / "missing" / "x.sock"), 1)
    assert len(os.listdir("/proc/self/fd")) == before

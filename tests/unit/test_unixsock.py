"""``UnixListener``, the one way the VMM serves a unix socket (QMP, console, vsock): a 0600
file whatever the umask, path checks, stale-socket replacement, removal only of our own file,
and an accept loop that backs off instead of spinning when the process is out of fds."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratovmm.errors import ConfigError
from stratovmm.host.eventloop import EventLoop
from stratovmm.host.unixsock import UnixListener, check_socket_path, private_listener


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


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    events = EventLoop("test")
    yield events
    events.close()


def test_listener_accepts_non_blocking_connections(tmp_path: Path, loop: EventLoop) -> None:
    """Each connection reaches ``on_accept`` from the loop, non-blocking; the file is 0600 and
    ``close`` removes it."""
    accepted: list[socket.socket] = []
    listener = UnixListener(str(tmp_path / "l.sock"), loop, accepted.append, "-test")
    assert stat.S_IMODE(os.lstat(tmp_path / "l.sock").st_mode) == 0o600
    clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    for client in clients:
        client.connect(str(tmp_path / "l.sock"))
    loop.run_once(0)
    assert len(accepted) == 3 and not any(s.getblocking() for s in accepted)
    listener.close()
    assert not (tmp_path / "l.sock").exists()
    for s in accepted + clients:
        s.close()


def test_stale_socket_is_replaced_live_one_and_files_refused(tmp_path: Path,
                                                             loop: EventLoop) -> None:
    """A socket file nobody listens on is replaced; a live listener's is refused (another VMM
    keeps it), and so is a regular file (never deleted)."""
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    first = UnixListener(path, loop, lambda s: s.close(), "-test")
    with pytest.raises(ConfigError, match=r"^-test: cannot listen on .*another process"):
        UnixListener(path, loop, lambda s: s.close(), "-test")
    first.close()
    (tmp_path / "f").write_text("keep")
    with pytest.raises(ConfigError, match="not a socket"):
        UnixListener(str(tmp_path / "f"), loop, lambda s: s.close(), "-test")
    assert (tmp_path / "f").read_text() == "keep"


def test_close_leaves_a_socket_that_is_no_longer_ours(tmp_path: Path, loop: EventLoop) -> None:
    """If another process replaced the socket file, closing does not delete theirs."""
    path = tmp_path / "c.sock"
    listener = UnixListener(str(path), loop, lambda s: s.close(), "-test")
    path.unlink()
    theirs = socket.socket(socket.AF_UNIX)
    theirs.bind(str(path))
    listener.close()
    assert path.exists()
    theirs.close()


@pytest.mark.parametrize(("name", "suffix", "needle"), [
    ("missing/c.sock", "", "does not exist"),
    ("", "", "is a directory"),
    ("x" * 120, "", "longer than 107 bytes"),
    ("v.sock", "_" + "9" * 100, "longer than 107 bytes"),
])
def test_unusable_paths_are_config_errors(tmp_path: Path, name: str, suffix: str,
                                          needle: str) -> None:
    """A path that cannot hold a socket (or the sockets named ``PATH + suffix`` beside it) is
    refused before anything is created, naming the option."""
    with pytest.raises(ConfigError, match=r"^-test: ") as info:
        check_socket_path(str(tmp_path / name) if name else str(tmp_path), "-test", suffix)
    assert needle in str(info.value)


ACCEPT_WITHOUT_FDS = """
import os, resource, socket, sys
from stratovmm.host import unixsock
from stratovmm.host.eventloop import EventLoop
unixsock.ACCEPT_RETRY = 0.05
loop = EventLoop("t")
accepted = []
listener = unixsock.UnixListener(sys.argv[1], loop, accepted.append, "-test")
client = socket.socket(socket.AF_UNIX)
client.connect(sys.argv[1])
fillers = []
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    while True:
        fillers.append(os.dup(0))
except OSError:
    pass
loop.run_once(0)
loop.run_once(0)
fd = listener.fileno()
print(listener.accept_errors, len(accepted), loop.watching(fd), len(loop.pending_timers()))
for filler in fillers:
    os.close(filler)
loop.run_once(1)
loop.run_once(0)
print(listener.accept_errors, len(accepted), loop.watching(fd))
"""


def test_accept_without_fds_backs_off_then_accepts(tmp_path: Path) -> None:
    """Out of fds (a real EMFILE under a low RLIMIT_NOFILE), ``accept`` fails once, is counted,
    and the listener stops watching until a timer re-arms it (a level-triggered epoll would
    otherwise wake the loop for the pending connection without end); with fds back, the
    connection is accepted."""
    proc = subprocess.run([sys.executable, "-c", ACCEPT_WITHOUT_FDS, str(tmp_path / "l.sock")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["1 0 False 1", "1 1 True"], proc.stdout + proc.stderr

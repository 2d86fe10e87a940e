"""A test-only plugin: once the VM runs, make a system call the seccomp filter forbids.

Installed only by the seccomp tests (a ``*.dist-info`` with an entry point on
``PYTHONPATH``, so the real ``stratovmm`` command discovers it like any plugin).
``STRATOVMM_TEST_FORBIDDEN`` picks the call; unset, the plugin does nothing.
(``kill-in-setup`` is not a system call test: it kills the VMM during set-up,
for the ``-daemonize`` error relay.)  When
the call is allowed after all (``-disable-seccomp``) it prints
``FORBIDDEN-CALL-RETURNED`` on stderr and the VM carries on.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import termios
import threading
from typing import Any

from stratovmm.api import hookimpl

STRATOVMM_API = "1.1"
TRIGGER = "STRATOVMM_TEST_FORBIDDEN"

_state: dict[str, Any] = {}


def _socket() -> None:
    """A network socket: nothing in the core opens one once the VM runs."""
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def _execve() -> None:
    """Running another program: no VMM code ever needs it (the path does not exist, so
    without the filter the call fails with ENOENT and the VM carries on)."""
    try:
        os.execv("/nonexistent/stratovmm-test-program", ["x"])
    except FileNotFoundError:
        pass


def _fork() -> None:
    """A new process: clone without CLONE_THREAD."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _open_for_writing() -> None:
    """openat with O_WRONLY|O_CREAT: only read-only opens are allowed after set-up."""
    with open(os.environ.get("STRATOVMM_TEST_FORBIDDEN_PATH", "/tmp/stratovmm-forbidden"),
              "w") as f:
        f.write("written")


def _ioctl_not_listed() -> None:
    """ioctl is allowed, but only for the listed requests: FIONREAD is not one."""
    import fcntl

    fcntl.ioctl(_state["pipe"][0], termios.FIONREAD, b"\0\0\0\0")


def _execve_on_old_thread() -> None:
    """A thread that existed before the filter went on (TSYNC must cover it) calls execve."""
    _state["go"].set()
    _state["thread"].join(10)


ACTIONS = {
    "socket": _socket,
    "execve": _execve,
    "fork": _fork,
    "open-write": _open_for_writing,
    "ioctl": _ioctl_not_listed,
    "thread-execve": _execve_on_old_thread,
}


def _waiting_thread() -> None:
    _state["go"].wait()
    _execve()
    _state["returned"] = True


@hookimpl
def vmm_vm_created(vm: Any) -> None:
    """Before the filter: a pipe for the ioctl case, a parked thread for the TSYNC case;
    ``kill-in-setup`` makes the VMM die of SIGKILL in the middle of set-up."""
    if os.environ.get(TRIGGER) == "kill-in-setup":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(TRIGGER) == "ioctl":
        _state["pipe"] = os.pipe()
    if os.environ.get(TRIGGER) == "thread-execve":
        _state["go"] = threading.Event()
        _state["thread"] = threading.Thread(target=_waiting_thread, name="old-thread",
                                            daemon=True)
        _state["thread"].start()


@hookimpl
def vmm_vm_started(vm: Any) -> None:
    """After the filter: make the chosen forbidden call."""
    what = os.environ.get(TRIGGER)
    if what not in ACTIONS:
        return
    ACTIONS[what]()
    if what != "thread-execve" or _state.get("returned"):
        print("FORBIDDEN-CALL-RETURNED", file=sys.stderr, flush=True)

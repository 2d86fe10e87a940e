"""Give the calling thread a kernel-visible name (``/proc/PID/task/TID/comm``).

Python's thread names live only inside the interpreter; naming the OS thread
(``prctl(PR_SET_NAME)``, 15 bytes max) lets ``top -H``, ``perf`` and our
benchmarks tell the vCPU threads and iothreads apart, as QEMU's ``CPU 0/KVM``
and ``IO iothread0`` are.
"""

from __future__ import annotations

import ctypes

PR_SET_NAME = 15
# the process's own symbols, libc's prctl among them: ctypes.util.find_library("c")
# would run ldconfig in a child process at every start just to name the same libc
_libc = ctypes.CDLL(None, use_errno=True)


def set_native_name(name: str) -> None:
    """Name the calling OS thread (truncated to 15 bytes); failures are ignored."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)

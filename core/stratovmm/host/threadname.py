"""Give the calling thread a kernel-visible name (``/proc/PID/task/TID/comm``).

Python's thread names live only inside the interpreter; naming the OS thread
(``prctl(PR_SET_NAME)``, 15 bytes max) lets ``top -H``, ``perf`` and our
benchmarks tell the vCPU threads and iothreads apart, as QEMU's ``CPU 0/KVM``
and ``IO iothread0`` are.
"""

from __future__ import annotations

import ctypes
import ctypes.util

PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_native_name(name: str) -> None:
    """Name the calling OS thread (truncated to 15 bytes); failures are ignored."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)

"""Make one thread of a running process execute a system call of our choosing (x86_64 ptrace).

This is what an attacker who took over the VMM's code would do; the seccomp tests use it
to show the filter, not the VMM's own code paths, is what stops a call.  The thread is
seized, interrupted and run to its next syscall-entry stop; there its registers are
rewritten to the injected call (Linux runs seccomp after the tracer's entry stop, on the
rewritten registers, since 4.8), it runs to the syscall-exit stop, and then gets its
original registers back pointing at its ``syscall`` instruction again, so it redoes the
call it was making and never notices.  A call the filter traps is skipped and ``SIGSYS``
is left pending: after the detach the VMM's SIGSYS reporter logs it and kills the process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_O_TRACESYSGOOD = 1
WALL = 0x40000000          # __WALL: wait for any thread of a traced process
SYSCALL_STOP = signal.SIGTRAP | 0x80
ENTRY_RAX = (1 << 64) - errno.ENOSYS     # rax at a syscall-entry stop
SYSCALL_INSN = 2                         # length of x86_64 ``syscall``
MAX_STOPS = 50

NR_OPENAT = 257
NR_SOCKET = 41
AT_FDCWD = -100


class UserRegs(ctypes.Structure):
    """``struct user_regs_struct`` (x86_64, <sys/user.h>)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
        "ds", "es", "fs", "gs")]


class Data:
    """An argument that is the address of ``payload``, copied into the thread's stack."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


Arg = int | Data

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> None:
    if _libc.ptrace(request, tid, addr, data) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def _regs(tid: int) -> UserRegs:
    regs = UserRegs()
    _ptrace(PTRACE_GETREGS, tid, 0, ctypes.cast(ctypes.byref(regs), ctypes.c_void_p))
    return regs


def _set_regs(tid: int, regs: UserRegs) -> None:
    _ptrace(PTRACE_SETREGS, tid, 0, ctypes.cast(ctypes.byref(regs), ctypes.c_void_p))


def _wait_stop(tid: int) -> int | None:
    """The stop signal (with event bits) of the next stop; None when the thread is gone."""
    _pid, status = os.waitpid(tid, WALL)
    if not os.WIFSTOPPED(status):
        return None
    return status >> 8


def _to_entry_stop(tid: int) -> bool:
    """Run ``tid`` to its next syscall-entry stop (False: it died on the way)."""
    deliver = 0
    for _ in range(MAX_STOPS):
        _ptrace(PTRACE_SYSCALL, tid, 0, deliver)
        stop = _wait_stop(tid)
        if stop is None:
            return False
        deliver = 0
        if stop == SYSCALL_STOP:
            if _regs(tid).rax == ENTRY_RAX:
                return True
        elif stop & 0xFF == stop:          # a signal for the thread: pass it on
            deliver = stop
    raise AssertionError(f"thread {tid} made no system call within {MAX_STOPS} stops")


def inject_syscall(tid: int, number: int, args: Sequence[Arg]) -> int | None:
    """Make thread ``tid`` call ``number`` with ``args``; its return value, or None if the
    thread (with its process) died first.  The caller must be allowed to trace ``tid``."""
    if platform.machine() != "x86_64":
        pytest.skip("the injector knows x86_64 registers only")
    _ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD)
    _ptrace(PTRACE_INTERRUPT, tid)
    if _wait_stop(tid) is None or not _to_entry_stop(tid):
        return None
    saved = _regs(tid)
    regs = _regs(tid)
    scratch = (saved.rsp - 4096) & ~0xF        # well below the red zone, in the stack mapping
    values = []
    for arg in args:
        if isinstance(arg, Data):
            fd = os.open(f"/proc/{tid}/mem", os.O_RDWR)
            try:
                os.pwrite(fd, arg.payload, scratch)
            finally:
                os.close(fd)
            values.append(scratch)
            scratch += (len(arg.payload) + 15) & ~0xF
        else:
            values.append(arg & 0xFFFF_FFFF_FFFF_FFFF)
    regs.orig_rax = number
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), values, strict=False):
        setattr(regs, name, value)
    _set_regs(tid, regs)
    _ptrace(PTRACE_SYSCALL, tid)
    stop = _wait_stop(tid)
    if stop is None:
        return None
    result = _regs(tid).rax
    saved.rip -= SYSCALL_INSN                 # redo the call the thread was making
    saved.rax = saved.orig_rax
    _set_regs(tid, saved)
    _ptrace(PTRACE_DETACH, tid, 0, 0 if stop == SYSCALL_STOP else stop & 0xFF)
    return result - (1 << 64) if result >= 1 << 63 else result


def thread_named(pid: int, name: str) -> int:
    """The id of ``pid``'s thread called ``name`` (``/proc/PID/task/TID/comm``)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                return int(task.name)
        except OSError:
            continue
    raise AssertionError(f"process {pid} has no thread named {name!r}")

"""Seccomp programs compiled by libseccomp, kept between starts.

Importing pyseccomp (and ``ctypes.util``, ``subprocess`` and ``shutil`` with it),
resolving every rule's system call and compiling the filter was about 8 ms of the
~103 ms from exec to the guest's first byte.  The rules
of a given set of devices are the same at every start, so the program libseccomp
makes for them (``seccomp_export_bpf``: the same ``struct sock_filter`` array its
``seccomp_load`` would load) is kept, with the reporter's table of system call names,
in a file of ``stratovmm.cachefile``.

A program is reused only for exactly the description it was compiled from
(``describe``): every allowed call with its argument conditions, the ioctl requests,
the default action, the machine, and the version and file of the code that compiles
(``stratovmm.host.sandbox``), so an upgrade or an edit of the compiler compiles afresh.
The description is stored whole in the file and compared, not only hashed.

One rule differs at every start: ``tgkill`` is allowed only towards our own process,
whose id is new each time.  The kept program is compiled with ``PID_MARKER`` in its
place (a number no process id reaches) and ``with_pid`` writes the real id into the
comparisons that hold the marker before the program is loaded."""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple

from stratovmm import __version__
from stratovmm.cachefile import cache_dir, read_private, write_private
from stratovmm.registry import SeccompRules

# a condition's value and mask as the filter compares them (64-bit registers), and an
# ioctl request as the kernel reads it (an unsigned int): shared with stratovmm.host.sandbox
LOW32 = 0xFFFF_FFFF
ALL64 = 0xFFFF_FFFF_FFFF_FFFF

FORMAT = 2          # 1: JSON text; 2: marshal (stratovmm.cachefile)
INSN_SIZE = 8           # sizeof(struct sock_filter): u16 code, u8 jt, u8 jf, u32 k
MAX_INSNS = 4096        # BPF_MAXINSNS
JEQ_K = 0x15            # BPF_JMP | BPF_JEQ | BPF_K: "A == k"
PID_MARKER = 0x7FFF_FFF1  # above any process id (pid_max is at most 2**22)


class Compiled(NamedTuple):
    """A loadable program and the SIGSYS reporter's name table."""

    program: bytes
    names: bytes


def with_pid(program: bytes, pid: int) -> bytes | None:
    """``program`` with ``pid`` in place of ``PID_MARKER``; None unless the marker is
    found, and only as the constant of ``A == k`` comparisons (then it can only be the
    stand-in the program was compiled with)."""
    out = bytearray(program)
    found = False
    for offset in range(0, len(out) - INSN_SIZE + 1, INSN_SIZE):
        code, _jt, _jf, k = struct.unpack_from("<HBBI", out, offset)
        if k != PID_MARKER:
            continue
        if code != JEQ_K:
            return None
        struct.pack_into("<HBBI", out, offset, code, _jt, _jf, pid)
        found = True
    return bytes(out) if found else None


def _stamp(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def describe(rules: SeccompRules, reporter: bool, compiler: str) -> str:
    """Everything the compiled program depends on, as one canonical string: the ``repr`` of
    a dict of plain values, its keys (and the system calls') inserted in sorted order
    (``compiler``: the file of the code that compiles it)."""
    syscalls = {}
    for name in sorted(rules.syscalls):
        alternatives = rules.conditions(name)
        syscalls[name] = None if alternatives is None else [
            [[c.arg, c.op, c.value & ALL64, c.mask & ALL64] for c in conditions]
            for conditions in alternatives]
    return repr({
        "compiler": [compiler, *_stamp(compiler)], "format": FORMAT,
        "ioctls": sorted({r & LOW32 for r in rules.ioctls}), "machine": os.uname().machine,
        "reporter": reporter, "syscalls": syscalls, "version": __version__,
    })


def _path(description: str) -> str:
    return os.path.join(cache_dir(), f"seccomp-{zlib.crc32(description.encode()):08x}.marshal")


def load(description: str, names_size: int) -> Compiled | None:
    """The program kept for ``description``, or None (none kept, another description,
    or a file that is not whole: a program that is not a whole number of instructions,
    a name table of another size)."""
    data = read_private(_path(description))
    if not isinstance(data, dict) or data.get("description") != description:
        return None
    try:
        program, names = data["program"], zlib.decompress(data["names"])
    except (KeyError, TypeError, zlib.error):
        return None
    if not isinstance(program, bytes):
        return None
    count, rest = divmod(len(program), INSN_SIZE)
    if rest or not 0 < count <= MAX_INSNS or len(names) != names_size:
        return None
    return Compiled(program, names)


def store(description: str, compiled: Compiled) -> None:
    """Keep ``compiled`` for ``description`` (nothing when the cache cannot be written)."""
    write_private(_path(description), {
        "description": description, "program": compiled.program,
        "names": zlib.compress(compiled.names)})

"""The seccomp filter: the core's allow-list plus every plugin's, applied to every thread.

Once the VM is set up (every fd it needs is open, the QMP socket listens), the
process needs only a small set of system calls; the filter forbids the rest.
The allow-list is ``CORE_SYSCALLS`` (below, one group per reason) plus what each
plugin in use declares through ``vmm_seccomp_rules`` (which plugins are in use
is the machine's choice, ``stratovmm.machine.seccomp``).  ``ioctl`` is always
limited to request numbers: ``CORE_IOCTLS`` and the plugins' ``allow_ioctl``
lists (argument 1, low 32 bits: the kernel's ``cmd`` is an ``unsigned int``).  A few core calls
are narrowed by argument (``core_conditions``).  Rules combine
(``SeccompRules``): a plugin adds narrowly conditioned allowances of its own
(blk: ``openat`` read-write but never creating or truncating, for
``blockdev-add``; vsock: ``socket`` for ``AF_UNIX`` streams only) and can never
lift a core condition.

A forbidden call is never run.  The filter's default action is
``SECCOMP_RET_TRAP``; the ``SIGSYS`` handler, a few lines of C in
``stratovmm.host._sandbox`` (see ``_sandbox_build.py``), writes one log line naming
the call to stderr and the ``-D`` log file and then ends the process with
``SIGSYS``.  Without that extension the default action is
``SECCOMP_RET_KILL_PROCESS`` with ``SECCOMP_FILTER_FLAG_LOG``, and the kernel
log (``dmesg``, audit type 1326) names the call instead.

The program libseccomp compiles for a set of rules is kept between starts
(``stratovmm.host.seccompcache``) and loaded by the same C extension, so a start
with devices it has seen before neither imports pyseccomp nor compiles.

The core allows 45 calls where StratoVirt allows 39, and not the same ones: a
Rust VMM after set-up makes only the calls its own code makes, while a CPython
process also runs its interpreter.  Objects come and go through pymalloc arenas
and glibc malloc (``mmap``, ``munmap``, ``mprotect``, ``madvise``, ``brk``,
``mremap``); vCPU and I/O threads are started by Python's ``threading`` after
set-up (``clone``, ``set_robust_list``, ``rseq``); signals go through Python's
handlers (``rt_sigaction``); any ``import`` or traceback while the VM runs
reads files (``openat`` read-only, ``newfstatat``, ``lseek``, ``getdents64``,
``fcntl``, ``getcwd``) and may seed ``random`` (``getrandom``) or ask which system
it runs on (``uname``: ``uuid``, which jsonschema imports); a socket left
to the garbage collector asks for its names (``getsockname``, ``getpeername``).
Forbidding those would turn a logged exception into a crash.  The block layer's
calls are not here: they belong to the blk plugin's list.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import termios
import time
from typing import Any

from stratovmm.errors import HostError, PluginError
from stratovmm.host import seccompcache
from stratovmm.host.logsetup import log_fds
from stratovmm.host.seccompcache import ALL64, LOW32
from stratovmm.kvm import request_number
from stratovmm.records import record
from stratovmm.registry import ArgCondition, SeccompRules

log = logging.getLogger(__name__)

# One group per reason.  Every name here was seen in ``strace -f`` after the point
# the filter goes on: of whole VM runs (Linux guest, serial, virtio-rng, 2 vCPUs,
# an iothread; ended by the guest's reboot and by SIGTERM) and of the Python
# operations the core performs while the VM runs (tests/unit/test_sandbox.py
# runs them under this list).  ``clock_gettime`` and ``restart_syscall`` are the
# two exceptions, explained beside them.
CORE_SYSCALLS: dict[str, tuple[str, ...]] = {
    # CPython's object allocator (pymalloc arenas) and glibc malloc map, unmap,
    # grow (brk, mremap) and trim memory all the time; glibc grows a thread's
    # arena with mprotect and frees a dead thread's stack with madvise; the
    # balloon gives guest pages back with madvise.
    "memory": ("mmap", "munmap", "mprotect", "madvise", "brk", "mremap"),
    # vCPU threads and iothreads are started by ``threading`` after set-up:
    # pthread_create is clone (CLONE_THREAD only, see core_conditions; clone3
    # answers ENOSYS so glibc falls back to clone), then set_robust_list and
    # rseq in the new thread; exit ends a thread, exit_group the process; each
    # vCPU thread and iothread names itself for top -H (prctl PR_SET_NAME only).
    "threads": ("clone", "set_robust_list", "rseq", "exit", "exit_group", "gettid", "prctl"),
    # the GIL, locks, conditions and thread joins are futexes.
    "locks": ("futex",),
    # Python's signal handlers (SIGTERM/SIGINT end the VM), the vCPU kick
    # (tgkill of one of our own threads), per-thread signal masks, returning
    # from a handler, and the kernel's restart of a call a signal interrupted.
    "signals": ("rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "tgkill", "restart_syscall"),
    # time.sleep (rate limiters, retries) and clock reads: the vDSO answers
    # clock_gettime on this host (tsc), the kernel does on hosts whose
    # clocksource has no vDSO support (hpet, acpi_pm), and every GIL wait reads it.
    "time": ("clock_gettime", "clock_nanosleep"),
    # the epoll loops, their wake-up eventfds, the ioeventfds a virtio transport
    # creates when its driver becomes ready (DRIVER_OK comes long after set-up),
    # reads and writes of eventfds, stdio and the log, closing fds at teardown.
    "event loops": ("epoll_wait", "epoll_ctl", "eventfd2", "read", "write", "close"),
    # QMP clients of the already listening unix socket: accept4, recv/send
    # (recvfrom/sendto), getfd's SCM_RIGHTS (recvmsg/sendmsg).  A socket left to
    # the garbage collector is repr()'d for its ResourceWarning: getsockname and
    # getpeername, even at interpreter exit.
    "qmp sockets": ("accept4", "recvfrom", "sendto", "recvmsg", "sendmsg", "getsockname",
                    "getpeername"),
    # reading files while running: a lazy ``import`` (stat the path entries,
    # list a directory, open and read the module) and the source lines of a
    # traceback; openat is read-only (see core_conditions).  io.open asks
    # isatty (ioctl TCGETS) and the interpreter's own traceback printer dups the
    # file (fcntl F_DUPFD_CLOEXEC).  A relative path (``''`` on sys.path, a
    # relative file name given over QMP) is resolved with getcwd.  A module imported
    # then may seed itself from the kernel's entropy (``random``, which ``email``,
    # ``tempfile`` and ``uuid`` import, calls os.urandom: getrandom) or ask which
    # system it runs on (``uuid`` calls platform.system(): uname); jsonschema, which
    # words a QMP client's first invalid arguments, is imported then.
    "reading files": ("openat", "newfstatat", "lseek", "getdents64", "fcntl", "getcwd",
                      "getrandom", "uname"),
    # the process itself: logging records the pid; the pidfile and the QMP
    # socket are removed on exit.
    "process": ("getpid", "unlink"),
}

#: ioctl request numbers the core issues after set-up.
CORE_IOCTLS: dict[str, int] = {
    # the vCPU loop, irqfd/ioeventfd (un)registration when a virtio driver
    # becomes ready or a device is hot-replaced, registers for a fatal-error report
    "KVM_RUN": request_number("KVM_RUN"),
    "KVM_IRQ_LINE": request_number("KVM_IRQ_LINE"),
    "KVM_IRQFD": request_number("KVM_IRQFD"),
    "KVM_IOEVENTFD": request_number("KVM_IOEVENTFD"),
    "KVM_GET_REGS": request_number("KVM_GET_REGS"),
    "KVM_GET_SREGS": request_number("KVM_GET_SREGS"),
    # io.open() asks isatty() of every file it opens (tracebacks, lazy imports)
    "TCGETS": termios.TCGETS,
    # socket.setblocking()/settimeout() and os.set_blocking() on QMP clients
    "FIONBIO": termios.FIONBIO,
}

_CLONE_THREAD = 0x00010000
_OPEN_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PR_SET_NAME = 15
_ALL_BUT_LOW5 = 0xFFFF_FFFF_FFFF_FFE0

def core_conditions() -> dict[str, tuple[tuple[ArgCondition, ...], ...]]:
    """Argument checks on core calls, which no plugin can lift: for each call its
    alternatives (any may hold), each a tuple of conditions (all must hold)."""
    return {
        # threads only: a clone without CLONE_THREAD would be a fork
        "clone": ((ArgCondition(0, "masked_eq", _CLONE_THREAD, _CLONE_THREAD),),),
        # read-only opens (imports, tracebacks); files to write are opened before
        "openat": ((ArgCondition(2, "masked_eq", 0, _OPEN_WRITE_FLAGS),),),
        # naming the calling thread, nothing else prctl can do
        "prctl": ((ArgCondition(0, "eq", _PR_SET_NAME),),),
        # nobody may replace the SIGSYS reporter once the filter is on: every signal
        # number but SIGSYS (31), as 1-30, 32-63 and 64.  The kernel reads the number
        # from the low 32 bits: only "below" and "equal" tests are safe, high bits
        # make them fail (a "not equal" would let 0x1_0000001f through as 31).
        "rt_sigaction": ((ArgCondition(0, "lt", signal.SIGSYS),),
                         (ArgCondition(0, "masked_eq", 32, _ALL_BUT_LOW5),),
                         (ArgCondition(0, "eq", 64),)),
        # signals only to our own threads (tgid = our pid; fixed once daemonized)
        "tgkill": ((ArgCondition(0, "eq", os.getpid()),),),
    }


def core_rules(rules: SeccompRules | None = None) -> SeccompRules:
    """``rules`` (or a fresh set) with the core's syscalls and ioctls added as ``core``."""
    rules = (rules if rules is not None else SeccompRules()).view("core")
    conditions = core_conditions()
    for names in CORE_SYSCALLS.values():
        for name in names:
            for when in conditions.get(name, ((),)):
                rules.allow(name, when=when)
    rules.allow("ioctl")
    rules.allow_ioctl(*CORE_IOCTLS.values())
    return rules


_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _pyseccomp() -> Any:
    """pyseccomp, imported without running ldconfig.

    At import it asks ``ctypes.util.find_library`` for libc and libseccomp, and on
    Linux each ask runs ``ldconfig -p`` in a child process: two fork/execs at every
    start of every VM.  While it imports, the sonames that ldconfig would name are
    tried first with ``dlopen``; a name that does not load (another libseccomp
    major) is left to ``find_library`` as before."""
    if "pyseccomp" in sys.modules:
        return sys.modules["pyseccomp"]
    import ctypes.util

    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
            except OSError:
                pass
            else:
                return soname
        return original(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = original
    return pyseccomp


def _syscall_number(name: str, owner: str) -> int:
    pyseccomp = _pyseccomp()

    number = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    if number < 0:
        who = "the core" if owner == "core" else f"plugin {owner}"
        raise PluginError(f"{who}: seccomp rule names unknown system call {name!r}")
    return number


def _to_arg(condition: ArgCondition) -> Any:
    """The pyseccomp ``Arg`` for one condition."""
    pyseccomp = _pyseccomp()

    value, mask = condition.value & ALL64, condition.mask & ALL64    # -100 as the register has it
    if condition.op == "masked_eq":
        return pyseccomp.Arg(condition.arg, pyseccomp.MASKED_EQ, mask, value)
    op = {"eq": pyseccomp.EQ, "lt": pyseccomp.LT, "le": pyseccomp.LE}[condition.op]
    return pyseccomp.Arg(condition.arg, op, value)


def build_filter(rules: SeccompRules, reporter: bool) -> Any:
    """A ``pyseccomp.SyscallFilter`` allowing exactly ``rules`` (not loaded yet)."""
    pyseccomp = _pyseccomp()

    default = pyseccomp.TRAP if reporter else pyseccomp.KILL_PROCESS
    flt = pyseccomp.SyscallFilter(default)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    flt.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    if not reporter:
        flt.set_attr(pyseccomp.Attr.CTL_LOG, 1)
    for name, owner in sorted(rules.syscalls.items()):
        _syscall_number(name, owner)
        if name == "ioctl":
            continue
        for plugin in rules.held_to_core(name):
            log.debug("seccomp: plugin %s allows %s, within the core's conditions", plugin, name)
        alternatives = rules.conditions(name)
        if alternatives is None:
            flt.add_rule(pyseccomp.ALLOW, name)
        for conditions in alternatives or ():
            flt.add_rule(pyseccomp.ALLOW, name, *(_to_arg(c) for c in conditions))
    if "ioctl" in rules.syscalls:
        for request in sorted({r & LOW32 for r in rules.ioctls}):
            flt.add_rule(pyseccomp.ALLOW, "ioctl",
                         pyseccomp.Arg(1, pyseccomp.MASKED_EQ, LOW32, request))
    if "clone3" not in rules.syscalls:
        # clone3 passes its flags in memory the filter cannot read; glibc falls back to clone
        flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    return flt


def export_program(flt: Any) -> bytes:
    """The BPF program libseccomp compiles for ``flt`` (what ``flt.load()`` would load)."""
    fd = os.memfd_create("stratovmm-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as f:
            flt.export_bpf(f)
            f.seek(0)
            return f.read()
    finally:
        os.close(fd)


def compile_rules(rules: SeccompRules) -> seccompcache.Compiled:
    """The program for ``rules`` with the reporter, and its name table: kept from an
    earlier start with the same rules, or compiled now by libseccomp and kept (with
    ``PID_MARKER`` standing for our process id, written in before it is loaded)."""
    from stratovmm.host._sandbox import lib as sb

    pid = os.getpid()
    template = pid_template(rules, pid)
    if template is None:
        return _compile_now(rules)
    description = seccompcache.describe(template, True, __file__)
    compiled = seccompcache.load(description, sb.SVMM_NAME_COUNT * sb.SVMM_NAME_WIDTH)
    if compiled is None:
        compiled = _compile_now(template)
        seccompcache.store(description, compiled)
    program = seccompcache.with_pid(compiled.program, pid)
    return _compile_now(rules) if program is None else compiled._replace(program=program)


def _compile_now(rules: SeccompRules) -> seccompcache.Compiled:
    """libseccomp's program for ``rules`` (with the reporter) and the name table."""
    return seccompcache.Compiled(export_program(build_filter(rules, True)), syscall_names())


def pid_template(rules: SeccompRules, pid: int) -> SeccompRules | None:
    """A copy of ``rules`` with ``PID_MARKER`` for ``pid`` in the ``tgkill`` rules ("our
    own process"); None when the marker is a constant of some other rule already, or the
    pid is: libseccomp shares a comparison between rules that test the same value, so
    the program compiled for the marker would not be the one compiled for that pid."""
    marker = seccompcache.PID_MARKER
    ours = (ArgCondition(0, "eq", pid),)
    halves = {half for name in rules.rules for _owner, conditions in rules.rules[name]
              if not (name == "tgkill" and conditions == ours)
              for c in conditions for v in (c.value, c.mask)
              for half in (v & LOW32, (v & ALL64) >> 32)}
    if {marker, pid & LOW32} & (halves | {r & LOW32 for r in rules.ioctls}):
        return None
    template = rules.copy()
    template.rules["tgkill"] = [
        (owner, (ArgCondition(0, "eq", marker),) if conditions == ours else conditions)
        for owner, conditions in rules.rules.get("tgkill", [])]
    if not template.rules["tgkill"]:
        del template.rules["tgkill"]
    return template


def syscall_names() -> bytes:
    """The table the SIGSYS reporter prints names from: one NUL-padded slot per number."""
    pyseccomp = _pyseccomp()

    from stratovmm.host._sandbox import lib as sb

    table = bytearray(sb.SVMM_NAME_COUNT * sb.SVMM_NAME_WIDTH)
    for number in range(sb.SVMM_NAME_COUNT):
        try:
            name = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)
        except ValueError:
            continue
        name = name[: sb.SVMM_NAME_WIDTH - 1]
        start = number * sb.SVMM_NAME_WIDTH
        table[start : start + len(name)] = name
    return bytes(table)


def _install_reporter(names: bytes) -> None:
    from stratovmm.host._sandbox import ffi
    from stratovmm.host._sandbox import lib as sb

    fds = sorted({2, *log_fds()})[: sb.SVMM_MAX_FDS]
    offset = time.localtime().tm_gmtoff
    if sb.svmm_install_sigsys(ffi.new("int[]", fds), len(fds), names, offset) != 0:
        raise HostError(f"cannot install the SIGSYS handler: {os.strerror(ffi.errno)}")


def _load_program(program: bytes) -> None:
    """Load a compiled program on every thread, as ``seccomp_load`` does with our
    attributes (no new privileges, TSYNC)."""
    from stratovmm.host._sandbox import lib as sb

    rc = sb.svmm_load_filter(program, len(program) // seccompcache.INSN_SIZE,
                             sb.SVMM_FILTER_TSYNC)
    if rc < 0:
        raise HostError(f"cannot load the seccomp filter: {os.strerror(-rc)}")
    if rc > 0:
        raise HostError(f"cannot load the seccomp filter: thread {rc} cannot take it")


def reporter_available() -> bool:
    """True when the C SIGSYS reporter (``stratovmm.host._sandbox``) is built."""
    try:
        import stratovmm.host._sandbox  # noqa: F401
    except ImportError:
        return False
    return True


@record
class Sandbox:
    """A filter built from the allow-list, ready to load: a compiled program with the
    reporter (``compile_rules``), or without the C extension a pyseccomp filter that
    libseccomp loads itself and the kernel reports on."""

    rules: SeccompRules
    filter: seccompcache.Compiled | Any

    @property
    def reporter(self) -> bool:
        """True when a forbidden call is logged by the C SIGSYS reporter."""
        return isinstance(self.filter, seccompcache.Compiled)

    @property
    def syscall_count(self) -> int:
        """How many system calls the filter allows (conditionally or not)."""
        return len(self.rules.syscalls)

    def apply(self) -> None:
        """Install the SIGSYS reporter and load the filter on every thread (TSYNC)."""
        if isinstance(self.filter, seccompcache.Compiled):
            _install_reporter(self.filter.names)
            _load_program(self.filter.program)
        else:
            try:
                self.filter.load()
            except OSError as exc:
                raise HostError(f"cannot load the seccomp filter: {exc.strerror}") from exc
        log.info("seccomp filter on: %d system calls, %d ioctl requests allowed; a forbidden"
                 " call %s", self.syscall_count, len(self.rules.ioctls),
                 "is logged and kills the process" if self.reporter
                 else "kills the process (named in the kernel log)")


def prepare(rules: SeccompRules) -> Sandbox:
    """The filter allowing exactly ``rules``, with the C reporter when it is built."""
    if reporter_available():
        return Sandbox(rules, compile_rules(rules))
    log.warning("stratovmm.host._sandbox is not built: forbidden system calls will be named"
                " only in the kernel log")
    return Sandbox(rules, build_filter(rules, False))


def apply(sandbox: Sandbox | None) -> None:
    """Load the prepared filter (nothing with ``-disable-seccomp``)."""
    if sandbox is not None:
        sandbox.apply()


"""vCPU threads: the KVM_RUN loop, exit dispatch, and pause/resume by kick.

Each vCPU runs on its own thread.  ``KVM_RUN`` releases the GIL, so vCPUs run
in parallel with each other and with device threads; the thread only takes
the GIL to dispatch an exit to the PIO or MMIO bus.  vCPU threads never
process virtqueues: guest kicks go to ioeventfds.

Pausing never polls: ``pause()`` sets ``kvm_run.immediate_exit`` (so a vCPU
about to enter KVM_RUN returns at once) and sends ``SIG_KICK`` to the thread
(so a vCPU inside KVM_RUN returns with EINTR); the thread then parks on a
condition variable until ``resume()``.
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from stratovmm.boot import cpu
from stratovmm.boot.loader import BootEntry
from stratovmm.errors import KvmError
from stratovmm.host.threadname import set_native_name
from stratovmm.kvm import exits
from stratovmm.kvm.fds import CpuidEntry, VcpuFd
from stratovmm.machine.bus import Bus

log = logging.getLogger(__name__)

SIG_KICK = signal.SIGRTMIN + 2
_BLOCKED_IN_VCPU = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE}


def install_kick_handler() -> None:
    """A no-op handler for SIG_KICK (must run on the main thread before vCPUs start)."""
    signal.signal(SIG_KICK, lambda _sig, _frame: None)


class StopReason(enum.StrEnum):
    """Why a vCPU asks the machine to stop (QMP SHUTDOWN ``reason`` values)."""

    GUEST_RESET = "guest-reset"
    GUEST_SHUTDOWN = "guest-shutdown"
    GUEST_PANIC = "guest-panic"
    INTERNAL_ERROR = "internal-error"


class VcpuObserver(Protocol):
    """What a vCPU tells its machine."""

    def vcpu_stopped(self, index: int, reason: StopReason, detail: str) -> None: ...


class Vcpu:
    """One vCPU thread over a ``VcpuFd``."""

    def __init__(self, fd: VcpuFd, pio: Bus, mmio: Bus, observer: VcpuObserver) -> None:
        self.fd = fd
        self.index = fd.index
        self._pio = pio
        self._mmio = mmio
        self._observer = observer
        self._cond = threading.Condition()
        self._pause_requested = False
        self._parked = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._unhandled_pio = 0     # in Python; the C run loop counts its own
        self._unhandled_mmio = 0

    @property
    def unhandled_pio(self) -> int:
        """PIO items to ports no device claims (answered in C or in Python)."""
        return self._unhandled_pio + self.fd.unclaimed_exits()[0]

    @property
    def unhandled_mmio(self) -> int:
        """MMIO accesses to addresses no device claims."""
        return self._unhandled_mmio + self.fd.unclaimed_exits()[1]

    # -- set-up ---------------------------------------------------------------

    def configure(self, supported_cpuid: list[CpuidEntry], count: int,
                  entry: BootEntry | None) -> None:
        """CPUID, MSRs, FPU and LAPIC for every vCPU; registers only for the boot vCPU."""
        fd = self.fd
        fd.set_cpuid(cpu.filter_cpuid(supported_cpuid, cpu.Topology(self.index, count)))
        accepted = fd.set_msrs(cpu.BOOT_MSRS)
        if accepted != len(cpu.BOOT_MSRS):
            log.warning("vCPU %d: KVM accepted %d of %d boot MSRs", self.index, accepted,
                        len(cpu.BOOT_MSRS))
        fd.set_fpu(cpu.FPU_FCW, cpu.FPU_MXCSR)
        fd.set_lapic(cpu.lapic_lint(fd.get_lapic()))
        if entry is None:
            return      # application processors wait in the LAPIC for INIT/SIPI
        sregs = fd.get_sregs()
        cpu.setup_sregs(sregs, entry.long_mode)
        fd.set_sregs(sregs)
        regs = fd.get_regs()
        regs.rflags = 0x2
        regs.rip = entry.rip
        if entry.long_mode:
            regs.rsi = entry.boot_info
            regs.rsp = regs.rbp = entry.stack
        else:
            regs.rbx = entry.boot_info
        fd.set_regs(regs)

    # -- thread control -------------------------------------------------------

    def start(self, paused: bool = False) -> None:
        """Start the thread; with ``paused`` it parks before its first KVM_RUN."""
        self._pause_requested = paused
        self._thread = threading.Thread(target=self._main, name=f"vcpu{self.index}", daemon=True)
        self._thread.start()

    def pause(self, timeout: float = 5.0) -> bool:
        """Kick the vCPU out of the guest and wait until it is parked."""
        with self._cond:
            self._pause_requested = True
        self._kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._parked or self._stopping or not self.alive,
                                       timeout)

    def resume(self) -> None:
        """Let a parked vCPU run the guest again."""
        with self._cond:
            self._pause_requested = False
            self.fd.set_immediate_exit(False)
            self._cond.notify_all()

    def stop(self) -> None:
        """Ask the thread to end (it leaves KVM_RUN at once)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._kick()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def native_id(self) -> int | None:
        """The vCPU thread's kernel tid (``gettid()``), as it recorded it when it started
        (QMP ``query-cpus`` ``thread_id``, StratoVirt's ``CPU::tid``).  In the instant
        between ``start()`` and that first line, ``threading`` already knows the same tid;
        None before ``start()``."""
        if self._thread_id is None and self._thread is not None:
            return self._thread.native_id
        return self._thread_id

    def _kick(self) -> None:
        self.fd.set_immediate_exit(True)
        thread = self._thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            try:
                signal.pthread_kill(thread.ident, SIG_KICK)
            except ProcessLookupError:
                pass

    # -- the run loop ---------------------------------------------------------

    def _main(self) -> None:
        self._thread_id = threading.get_native_id()
        set_native_name(f"vcpu{self.index}")
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_IN_VCPU)
        try:
            self._loop()
        except KvmError as exc:
            self._observer.vcpu_stopped(self.index, StopReason.INTERNAL_ERROR, str(exc))
        except Exception as exc:  # a bug in a device must not leave the VM hanging
            log.exception("vCPU %d: unexpected error", self.index)
            self._observer.vcpu_stopped(self.index, StopReason.INTERNAL_ERROR, repr(exc))

    def _park_if_requested(self) -> bool:
        """Park while a pause is requested; False once the vCPU must end."""
        with self._cond:
            if self._pause_requested and not self._stopping:
                self._parked = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: not self._pause_requested or self._stopping)
                self._parked = False
            if not self._pause_requested and not self._stopping:
                self.fd.set_immediate_exit(False)
            return not self._stopping

    def _loop(self) -> None:
        run = self.fd.run
        handlers: dict[type, Callable[[exits.VcpuExit], bool]] = {
            exits.IoOut: self._io_out, exits.IoIn: self._io_in,
            exits.MmioWrite: self._mmio_write, exits.MmioRead: self._mmio_read,
        }
        while self._park_if_requested():
            while True:
                ex = run()
                handler = handlers.get(type(ex))
                if handler is not None:
                    handler(ex)
                    continue
                if isinstance(ex, exits.Interrupted):
                    break
                if not self._special_exit(ex):
                    return

    def _io_out(self, ex: exits.VcpuExit) -> bool:
        assert isinstance(ex, exits.IoOut)
        size, data = ex.size, ex.data
        for i in range(0, len(data), size):
            if not self._pio.write(ex.port, data[i : i + size]):
                self._unhandled_pio += 1
        return True

    def _io_in(self, ex: exits.VcpuExit) -> bool:
        assert isinstance(ex, exits.IoIn)
        out = bytearray()
        for _ in range(ex.count):
            data = self._pio.read(ex.port, ex.size)
            if data is None:
                # nothing drives the ISA bus: it floats high, as on real hardware and in
                # QEMU, so a guest polling a status register of an absent device moves on
                self._unhandled_pio += 1
                data = b"\xff" * ex.size
            out += data
        self.fd.complete_read(bytes(out))
        return True

    def _mmio_write(self, ex: exits.VcpuExit) -> bool:
        assert isinstance(ex, exits.MmioWrite)
        if not self._mmio.write(ex.addr, ex.data):
            self._unhandled_mmio += 1
        return True

    def _mmio_read(self, ex: exits.VcpuExit) -> bool:
        assert isinstance(ex, exits.MmioRead)
        data = self._mmio.read(ex.addr, ex.size)
        if data is None:
            self._unhandled_mmio += 1
            data = bytes(ex.size)
        self.fd.complete_read(data)
        return True

    def _special_exit(self, ex: exits.VcpuExit) -> bool:
        """Handle the rare exits; False when the vCPU must end."""
        if isinstance(ex, exits.Hlt):
            return True
        if isinstance(ex, exits.Shutdown):
            self._observer.vcpu_stopped(self.index, StopReason.GUEST_RESET, "triple fault")
            return False
        if isinstance(ex, exits.SystemEvent):
            reason = {"shutdown": StopReason.GUEST_SHUTDOWN, "reset": StopReason.GUEST_RESET,
                      "crash": StopReason.GUEST_PANIC}.get(ex.kind, StopReason.GUEST_SHUTDOWN)
            self._observer.vcpu_stopped(self.index, reason, f"system event {ex.kind}")
            return False
        if isinstance(ex, exits.InternalError):
            detail = f"KVM internal error suberror={ex.suberror} data={[hex(d) for d in ex.data]}"
            self._observer.vcpu_stopped(self.index, StopReason.INTERNAL_ERROR,
                                        detail + "; " + self.describe_registers())
            return False
        detail = f"unexpected exit {ex!r}"
        self._observer.vcpu_stopped(self.index, StopReason.INTERNAL_ERROR,
                                    detail + "; " + self.describe_registers())
        return False

    def describe_registers(self) -> str:
        """The general, segment and control registers, for a fatal-error report."""
        try:
            r = self.fd.get_regs()
            s = self.fd.get_sregs()
        except KvmError as exc:
            return f"registers unavailable ({exc})"
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10",
                 "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
        gprs = " ".join(f"{n}={getattr(r, n):#x}" for n in names)
        return (f"vCPU {self.index}: {gprs} cs={s.cs.selector:#x}/l={s.cs.l}/db={s.cs.db}"
                f" cr0={s.cr0:#x} cr2={s.cr2:#x} cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x}")

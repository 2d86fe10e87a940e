"""Typed wrappers over /dev/kvm, a VM fd and a vCPU fd.

Every ioctl goes through ``_ioctl``, which turns a failure into ``KvmError``
naming the request.  cffi releases the GIL around each C call, so a vCPU
thread sitting in ``KVM_RUN`` lets every other thread run.
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
from collections.abc import Iterable, Sequence
from typing import Any

from stratovmm.errors import HostError, KvmError
from stratovmm.fastpath import fastpath_enabled
from stratovmm.kvm import exits
from stratovmm.kvm._kvm import ffi, lib
from stratovmm.records import record

MAX_CPUID_ENTRIES = 256


def request_number(name: str) -> int:
    """The number of ioctl request ``name`` of <linux/kvm.h> (``"KVM_RUN"``), for code
    outside ``stratovmm.kvm`` that must name requests (the seccomp allow-list)."""
    if not name.startswith("KVM_"):
        raise ValueError(f"{name!r} is not a KVM ioctl request")
    return int(getattr(lib, name))


def _ioctl(fd: int, request: int, arg: Any, what: str) -> int:
    """Issue one ioctl; raise ``KvmError`` naming ``what`` on failure."""
    if isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    rc: int = lib.ioctl(fd, request, arg)
    if rc < 0:
        raise KvmError(what, ffi.errno)
    return rc


@record(frozen=True, slots=True)
class CpuidEntry:
    """One CPUID leaf/subleaf as KVM describes it."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm:
    """The /dev/kvm system fd."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise HostError(f"cannot open {path}: {exc.strerror}") from exc
        version = _ioctl(self.fd, lib.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != lib.KVM_API_VERSION:
            raise HostError(f"{path}: KVM API version {version}, need {lib.KVM_API_VERSION}")

    def check_extension(self, cap: str) -> int:
        """KVM's answer for capability ``cap``, named as in <linux/kvm.h>
        (``"KVM_CAP_IRQFD"``); 0 = absent."""
        return _ioctl(self.fd, lib.KVM_CHECK_EXTENSION, getattr(lib, cap),
                      "KVM_CHECK_EXTENSION")

    def vcpu_mmap_size(self) -> int:
        """Size of the ``kvm_run`` area each vCPU fd maps."""
        return _ioctl(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID: every leaf KVM can present to a guest."""
        _owner, cpuid = _new_cpuid2(MAX_CPUID_ENTRIES)
        _ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
        return [
            CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (cpuid.entries[i] for i in range(cpuid.nent))
        ]

    def create_vm(self) -> VmFd:
        """KVM_CREATE_VM with the default machine type."""
        return VmFd(self, _ioctl(self.fd, lib.KVM_CREATE_VM, 0, "KVM_CREATE_VM"))

    def close(self) -> None:
        """Close the system fd (VMs created from it stay valid)."""
        os.close(self.fd)


def _new_varsize(struct: str, entry: str, n: int) -> tuple[Any, Any]:
    """Allocate a header struct followed by ``n`` entries (a C flexible array).

    Returns (owner, pointer): the pointer does not keep the memory alive, so
    callers hold ``owner`` for as long as they use ``pointer``.
    """
    owner = ffi.new("char[]", ffi.sizeof(struct) + n * ffi.sizeof(entry))
    return owner, ffi.cast(f"{struct} *", owner)


def _new_cpuid2(n: int) -> tuple[Any, Any]:
    owner, cpuid = _new_varsize("struct kvm_cpuid2", "struct kvm_cpuid_entry2", n)
    cpuid.nent = n
    return owner, cpuid


class ExitWindows:
    """The windows a bus's devices claim, mirrored into C for ``VcpuFd.run``: an exit to an
    address outside all of them is answered without returning to Python, and so is an
    access to a register a window's device gives C (``register_cells()``: a
    ``stratovmm.kvm.registers.RegisterCells``).  ``publish`` is the bus's to call, with the
    whole sorted list, whenever it changes (one writer at a time)."""

    def __init__(self) -> None:
        self.table = ffi.new("struct svmm_windows *")
        # every register block ever published stays alive: a vCPU may still be reading one
        # through the table it looked at just before a hot-unplug rewrote it
        self._cells: dict[int, Any] = {}

    def publish(self, windows: Sequence[tuple[int, int, object]]) -> None:
        """Replace the table with ``windows`` ((base, length, device) sorted by base).  The
        count is odd while the entries change, so C never trusts a half-written table; a list
        longer than the table leaves it odd for good, and every exit then goes to Python."""
        table = self.table
        table.seq |= 1          # odd (it already is after a list that did not fit)
        if len(windows) > lib.SVMM_MAX_WINDOWS:
            return
        for i, (base, length, device) in enumerate(windows):
            table.base[i] = base
            table.end[i] = base + length
            table.regs[i] = self._cells_of(device)
        table.count = len(windows)
        table.seq += 1          # even again, and unlike any value C read before

    def _cells_of(self, device: object) -> Any:
        offer = getattr(device, "register_cells", None)
        registers = offer() if offer is not None else None
        if registers is None:
            return ffi.NULL
        self._cells[id(registers)] = registers
        return registers.cells


class VmFd:
    """A KVM VM: memory slots, irqchip, PIT, irqfd/ioeventfd, vCPU creation."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        # filled by the machine's PIO and MMIO buses; shared by every vCPU
        self.pio_windows = ExitWindows()
        self.mmio_windows = ExitWindows()

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        """Map ``size`` bytes of host memory at ``host_addr`` to the guest."""
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_phys_addr
        region.memory_size = size
        region.userspace_addr = host_addr
        _ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def set_tss_addr(self, addr: int) -> None:
        """Three pages KVM needs for real-mode emulation on VMX (harmless elsewhere)."""
        _ioctl(self.fd, lib.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        """One page for the EPT identity map on VMX."""
        value = ffi.new("uint64_t *", addr)
        _ioctl(self.fd, lib.KVM_SET_IDENTITY_MAP_ADDR, value, "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        """In-kernel PIC, IOAPIC and per-vCPU LAPICs."""
        _ioctl(self.fd, lib.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self) -> None:
        """In-kernel i8254 PIT; port 0x61 is answered with a dummy speaker."""
        config = ffi.new("struct kvm_pit_config *")
        config.flags = lib.KVM_PIT_SPEAKER_DUMMY
        _ioctl(self.fd, lib.KVM_CREATE_PIT2, config, "KVM_CREATE_PIT2")

    def irq_line(self, irq: int, level: int) -> None:
        """Set the level of GSI ``irq`` on the in-kernel irqchip."""
        line = ffi.new("struct kvm_irq_level *")
        line.irq = irq
        line.level = level
        _ioctl(self.fd, lib.KVM_IRQ_LINE, line, "KVM_IRQ_LINE")

    def register_irqfd(self, eventfd: int, gsi: int) -> None:
        """Writing ``eventfd`` now injects an edge on ``gsi`` inside the kernel."""
        self._irqfd(eventfd, gsi, 0)

    def unregister_irqfd(self, eventfd: int, gsi: int) -> None:
        """Undo ``register_irqfd``."""
        self._irqfd(eventfd, gsi, lib.KVM_IRQFD_FLAG_DEASSIGN)

    def _irqfd(self, eventfd: int, gsi: int, flags: int) -> None:
        irqfd = ffi.new("struct kvm_irqfd *")
        irqfd.fd = eventfd
        irqfd.gsi = gsi
        irqfd.flags = flags
        _ioctl(self.fd, lib.KVM_IRQFD, irqfd, "KVM_IRQFD")

    def register_ioeventfd(
        self, eventfd: int, addr: int, length: int, datamatch: int | None = None, pio: bool = False
    ) -> None:
        """A guest write of ``length`` bytes at ``addr`` (matching ``datamatch``) signals
        ``eventfd`` without leaving the kernel."""
        self._ioeventfd(eventfd, addr, length, datamatch, pio, 0)

    def unregister_ioeventfd(
        self, eventfd: int, addr: int, length: int, datamatch: int | None = None, pio: bool = False
    ) -> None:
        """Undo ``register_ioeventfd`` (same arguments)."""
        self._ioeventfd(eventfd, addr, length, datamatch, pio, lib.KVM_IOEVENTFD_FLAG_DEASSIGN)

    def _ioeventfd(
        self, eventfd: int, addr: int, length: int, datamatch: int | None, pio: bool, flags: int
    ) -> None:
        ioev = ffi.new("struct kvm_ioeventfd *")
        ioev.addr = addr
        ioev.len = length
        ioev.fd = eventfd
        if datamatch is not None:
            ioev.datamatch = datamatch
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        ioev.flags = flags
        _ioctl(self.fd, lib.KVM_IOEVENTFD, ioev, "KVM_IOEVENTFD")

    def create_vcpu(self, index: int) -> VcpuFd:
        """KVM_CREATE_VCPU with APIC id ``index``; maps its ``kvm_run`` area."""
        fd = _ioctl(self.fd, lib.KVM_CREATE_VCPU, index, f"KVM_CREATE_VCPU {index}")
        windows = (self.pio_windows, self.mmio_windows) if fastpath_enabled() else None
        return VcpuFd(fd, index, self.kvm.vcpu_mmap_size(), windows)

    def close(self) -> None:
        """Close the VM fd."""
        os.close(self.fd)


_SYSTEM_EVENTS = {
    lib.KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown",
    lib.KVM_SYSTEM_EVENT_RESET: "reset",
    lib.KVM_SYSTEM_EVENT_CRASH: "crash",
}


class VcpuFd:
    """One vCPU: register state and ``run()``, which returns an exit object.

    With ``windows`` (the VM's PIO and MMIO ``ExitWindows``), ``run()`` answers exits to
    unclaimed addresses in C and counts them (``unclaimed_exits``); without, every exit
    comes back to Python (``STRATOVMM_FASTPATH=0``)."""

    def __init__(self, fd: int, index: int, mmap_size: int,
                 windows: tuple[ExitWindows, ExitWindows] | None = None) -> None:
        self.fd = fd
        self.index = index
        self._area = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._area)
        self._run = ffi.cast("struct kvm_run *", ffi.from_buffer(self._area))
        self._io = lib.svmm_run_io_of(self._run)
        self._mmio = lib.svmm_run_mmio_of(self._run)
        self._pending_read: tuple[int, int] | None = None
        self._counts = ffi.new("struct svmm_exit_counts *")
        pio, mmio = (windows[0].table, windows[1].table) if windows else (ffi.NULL, ffi.NULL)
        self._args = (fd, self._run, mmap_size, pio, mmio, self._counts)

    # -- running -------------------------------------------------------------

    def unclaimed_exits(self) -> tuple[int, int]:
        """PIO items and MMIO accesses to unclaimed addresses answered in C so far."""
        return self._counts.pio, self._counts.mmio

    def run(self) -> exits.VcpuExit:
        """KVM_RUN until the next exit that userspace must handle."""
        reason = lib.svmm_vcpu_run(*self._args)
        if reason < 0:
            if -reason in (_errno.EINTR, _errno.EAGAIN):
                return exits.INTERRUPTED
            raise KvmError(f"KVM_RUN on vCPU {self.index}", -reason)
        if reason == lib.KVM_EXIT_IO:
            return self._io_exit()
        if reason == lib.KVM_EXIT_MMIO:
            return self._mmio_exit()
        return self._other_exit(reason)

    def _io_exit(self) -> exits.VcpuExit:
        io = self._io
        size, count, offset = io.size, io.count, io.data_offset
        if io.direction == lib.KVM_EXIT_IO_OUT:
            return exits.IoOut(io.port, size, bytes(self._view[offset : offset + size * count]))
        self._pending_read = (offset, size * count)
        return exits.IoIn(io.port, size, count)

    def _mmio_exit(self) -> exits.VcpuExit:
        mmio = self._mmio
        length = mmio.len
        if mmio.is_write:
            return exits.MmioWrite(mmio.phys_addr, bytes(ffi.buffer(mmio.data, length)))
        self._pending_read = (-1, length)
        return exits.MmioRead(mmio.phys_addr, length)

    def _other_exit(self, reason: int) -> exits.VcpuExit:
        if reason == lib.KVM_EXIT_HLT:
            return exits.HLT
        if reason == lib.KVM_EXIT_SHUTDOWN:
            return exits.SHUTDOWN
        if reason == lib.KVM_EXIT_INTR:
            return exits.INTERRUPTED
        if reason == lib.KVM_EXIT_SYSTEM_EVENT:
            kind = lib.svmm_run_system_event_of(self._run).type
            return exits.SystemEvent(_SYSTEM_EVENTS.get(kind, str(kind)))
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            internal = lib.svmm_run_internal_of(self._run)
            ndata = min(internal.ndata, 16)
            return exits.InternalError(internal.suberror, tuple(internal.data[0:ndata]))
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            fail = lib.svmm_run_fail_entry_of(self._run)
            return exits.FailEntry(fail.hardware_entry_failure_reason)
        return exits.UnknownExit(reason)

    def complete_read(self, data: bytes) -> None:
        """Answer the pending ``IoIn``/``MmioRead`` with ``data`` (padded or cut to size)."""
        pending = self._pending_read
        if pending is None:
            return
        offset, length = pending
        data = data[:length].ljust(length, b"\0")
        if offset < 0:
            ffi.memmove(self._mmio.data, data, length)
        else:
            self._view[offset : offset + length] = data
        self._pending_read = None

    def set_immediate_exit(self, value: bool) -> None:
        """Make the next (or current, after a signal) KVM_RUN return at once."""
        self._run.immediate_exit = 1 if value else 0

    # -- register state ------------------------------------------------------

    def get_regs(self) -> Any:
        """KVM_GET_REGS as a ``struct kvm_regs`` cdata."""
        regs = ffi.new("struct kvm_regs *")
        _ioctl(self.fd, lib.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: Any) -> None:
        """KVM_SET_REGS from a ``struct kvm_regs`` cdata."""
        _ioctl(self.fd, lib.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> Any:
        """KVM_GET_SREGS as a ``struct kvm_sregs`` cdata."""
        sregs = ffi.new("struct kvm_sregs *")
        _ioctl(self.fd, lib.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        """KVM_SET_SREGS from a ``struct kvm_sregs`` cdata."""
        _ioctl(self.fd, lib.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def set_fpu(self, fcw: int, mxcsr: int) -> None:
        """Reset x87/SSE state with the given control words."""
        fpu = ffi.new("struct kvm_fpu *")
        fpu.fcw = fcw
        fpu.mxcsr = mxcsr
        _ioctl(self.fd, lib.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_fpu_control(self) -> tuple[int, int]:
        """(fcw, mxcsr) as KVM reports them."""
        fpu = ffi.new("struct kvm_fpu *")
        _ioctl(self.fd, lib.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu.fcw, fpu.mxcsr

    def set_msrs(self, msrs: Sequence[tuple[int, int]]) -> int:
        """KVM_SET_MSRS; returns how many KVM accepted (stops at the first refused)."""
        _owner, buf = _new_msrs(len(msrs))
        for i, (index, data) in enumerate(msrs):
            buf.entries[i].index = index
            buf.entries[i].data = data
        return _ioctl(self.fd, lib.KVM_SET_MSRS, buf, "KVM_SET_MSRS")

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS for ``indices``; MSRs KVM does not know are left out."""
        wanted = list(indices)
        _owner, buf = _new_msrs(len(wanted))
        for i, index in enumerate(wanted):
            buf.entries[i].index = index
        got = _ioctl(self.fd, lib.KVM_GET_MSRS, buf, "KVM_GET_MSRS")
        return {buf.entries[i].index: buf.entries[i].data for i in range(got)}

    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        """KVM_SET_CPUID2 with the given leaves."""
        _owner, cpuid = _new_cpuid2(len(entries))
        for i, entry in enumerate(entries):
            dst = cpuid.entries[i]
            dst.function, dst.index, dst.flags = entry.function, entry.index, entry.flags
            dst.eax, dst.ebx, dst.ecx, dst.edx = entry.eax, entry.ebx, entry.ecx, entry.edx
        _ioctl(self.fd, lib.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")

    def get_lapic(self) -> bytearray:
        """The LAPIC register page (KVM_APIC_REG_SIZE bytes)."""
        lapic = ffi.new("struct kvm_lapic_state *")
        _ioctl(self.fd, lib.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC")
        return bytearray(ffi.buffer(lapic.regs))

    def set_lapic(self, regs: bytes | bytearray) -> None:
        """Write back a LAPIC register page from ``get_lapic``."""
        lapic = ffi.new("struct kvm_lapic_state *")
        ffi.memmove(lapic.regs, bytes(regs), len(regs))
        _ioctl(self.fd, lib.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE (runnable, uninitialized = waiting for SIPI, halted, ...)."""
        state = ffi.new("struct kvm_mp_state *")
        _ioctl(self.fd, lib.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return int(state.mp_state)

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the fd."""
        self._io = self._mmio = self._run = None
        self._view.release()
        self._area.close()
        os.close(self.fd)


def _new_msrs(n: int) -> tuple[Any, Any]:
    owner, msrs = _new_varsize("struct kvm_msrs", "struct kvm_msr_entry", n)
    msrs.nmsrs = n
    return owner, msrs

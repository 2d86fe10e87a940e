"""The registers of a virtio-mmio window that the vCPUs' C run loop answers itself.

A driver reads InterruptStatus and writes InterruptACK on every interrupt (Linux's
``vm_interrupt``), and reads the identification registers when it probes; each such exit
answered in Python costs a vCPU several microseconds of interpreter time.  The transport
keeps those values in a ``struct svmm_regs`` (``RegisterCells``); the bus hands it to the
vCPUs' exit table beside the window (``ExitWindows``), and ``svmm_vcpu_run`` answers the
32-bit accesses to them as the transport would (virtio 1.2 §4.2.2).  Any other access goes
to the transport in Python, which reads the same cells.
"""

from __future__ import annotations

from typing import Any

from stratovmm.kvm._kvm import ffi, lib

_INTERRUPT_ACK = 0x064          # (stratovmm.virtio.constants; the kvm layer names no device)


class RegisterCells:
    """One window's ``struct svmm_regs``: constant identification values, and the
    InterruptStatus bits, which any thread may set and the driver's ACK clears."""

    __slots__ = ("cells",)

    def __init__(self, magic: int, version: int, device_id: int, vendor_id: int) -> None:
        self.cells: Any = ffi.new("struct svmm_regs *", {
            "magic": magic, "version": version, "device_id": device_id,
            "vendor_id": vendor_id})

    @property
    def interrupt_status(self) -> int:
        """InterruptStatus as the driver reads it now."""
        return int(self.cells.interrupt_status)

    @interrupt_status.setter
    def interrupt_status(self, value: int) -> None:
        self.cells.interrupt_status = value & 0xFFFFFFFF

    def interrupt_status_address(self) -> int:
        """Where InterruptStatus lives, for C that raises bits in it too (``svmm_wait``)."""
        return int(ffi.cast("uintptr_t", ffi.addressof(self.cells, "interrupt_status")))

    def raise_bits(self, bits: int) -> None:
        """Set ``bits`` (atomically: a vCPU may be acknowledging others in C meanwhile)."""
        lib.svmm_status_or(ffi.addressof(self.cells, "interrupt_status"), bits)

    def acknowledge(self, bits: int) -> None:
        """The driver's InterruptACK write, when it reaches Python (§4.2.2)."""
        data = ffi.new("uint8_t[4]", list((bits & 0xFFFFFFFF).to_bytes(4, "little")))
        lib.svmm_mmio_register(self.cells, _INTERRUPT_ACK, 4, 1, data)   # C's own code

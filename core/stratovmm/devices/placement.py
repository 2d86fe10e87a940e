"""What a device factory returns: the device, and where the guest finds it.

A factory (``DeviceType.create``) builds the device model and returns it; the
core does the rest the same way for every plugin: it checks the id is unused,
attaches the device where the guest will see it, records it under its id (QMP
``vm.device(id)``, ``query-stats``) and closes it when the VM ends, or at once
when attaching fails.  A factory returns:

- a ``VirtioDevice``: the next free virtio-mmio window, its queues served on the
  main loop (``VirtioSlot(device, iothread)`` to serve them on an ``-iothread``);
- ``PioWindow(device, base, length)`` / ``MmioWindow(device, base, length)``: a
  register window on the port-I/O or MMIO bus (the device is a ``BusDevice``);
- any other ``Device``: recorded only (it answers ``query-stats`` and is closed at
  exit, but the guest sees nothing of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from stratovmm.records import record

if TYPE_CHECKING:
    from stratovmm.virtio.device import VirtioDevice


@runtime_checkable
class Device(Protocol):
    """What the core needs of every device it records: an id unique in the VM, counters
    for ``query-stats`` and a way to release host resources."""

    @property
    def id(self) -> str:
        """The id the device is recorded under (``vm.device(id)``)."""
        ...

    def stats(self) -> dict[str, int]:
        """The device's counters (``requests``, ``bytes_read``, ...)."""
        ...

    def close(self) -> None:
        """Release host resources (fds, threads, terminal modes); called once."""
        ...


@runtime_checkable
class BusDevice(Device, Protocol):
    """A ``Device`` with registers the guest reaches through a bus window (the bus itself
    only needs ``read``/``write``: ``stratovmm.machine.bus``)."""

    def read(self, offset: int, size: int) -> bytes:
        """A guest read of ``size`` bytes at ``offset`` into the window (vCPU thread)."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """A guest write at ``offset`` into the window (vCPU thread)."""
        ...


@record(frozen=True)
class VirtioSlot:
    """Put ``device`` on the next free virtio-mmio window and serve its queues on the loop
    of ``iothread`` (None: the main loop)."""

    device: VirtioDevice
    iothread: str | None = None


@record(frozen=True)
class PioWindow:
    """Give ``device`` the I/O ports [base, base+length)."""

    device: BusDevice
    base: int
    length: int


@record(frozen=True)
class MmioWindow:
    """Give ``device`` the guest-physical range [base, base+length) (outside RAM: the MMIO
    hole's free part is ``PLUGIN_MMIO_START`` .. ``PLUGIN_MMIO_END``)."""

    device: BusDevice
    base: int
    length: int


Built = Device | VirtioSlot | PioWindow | MmioWindow
"""What a device factory returns (a ``VirtioDevice`` is a ``Device``)."""

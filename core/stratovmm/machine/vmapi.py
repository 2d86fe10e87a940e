"""``VmApi``: the one object plugins get to reach the VM.

Device factories receive it while the VM is built (``BuildContext`` is the same
type under the name the factories use), QMP handlers and lifecycle hooks
while it runs.  It exposes what a device needs (guest memory, IRQs, the event
loops, the kernel command line, the recorded devices, events, named fds) and
nothing of KVM itself.  Devices do not attach themselves: a factory returns its
device and the core attaches and records it (``stratovmm.machine.devicetable``).

It reads the machine only through ``Machine``, the list of what it needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from stratovmm.errors import ConfigError, HostError
from stratovmm.host.eventloop import EventLoop
from stratovmm.machine.irq import IrqLine
from stratovmm.qmp.events import EventBus, EventThrottle

if TYPE_CHECKING:
    from stratovmm.boot.cmdline import Cmdline
    from stratovmm.machine.devicetable import DeviceTable
    from stratovmm.machine.slots import VirtioSlots
    from stratovmm.memory import GuestMemoryProtocol
    from stratovmm.registry import HotplugDriver

log = logging.getLogger(__name__)

MAX_NAMED_FDS = 64      # names QMP getfd may hold at once


class Machine(Protocol):
    """What ``VmApi`` reads of the machine (``MicroVm`` has all of it)."""

    @property
    def name(self) -> str | None: ...
    @property
    def run_state(self) -> str: ...
    @property
    def vcpu_count(self) -> int: ...
    @property
    def memory(self) -> GuestMemoryProtocol: ...
    @property
    def cmdline(self) -> Cmdline: ...
    @property
    def main_loop(self) -> EventLoop: ...
    @property
    def devices(self) -> DeviceTable: ...
    @property
    def virtio(self) -> VirtioSlots: ...
    @property
    def hotplug_drivers(self) -> dict[str, HotplugDriver[Any]]: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def throttles(self) -> list[EventThrottle]: ...
    @property
    def named_fds(self) -> dict[str, int]: ...
    @property
    def plugin_state(self) -> dict[str, dict[str, Any]]: ...

    def loop_for(self, iothread: str | None) -> EventLoop: ...
    def irq_line(self, gsi: int) -> IrqLine: ...
    def vcpu_thread_ids(self) -> list[int | None]: ...
    def pause(self) -> bool: ...
    def resume(self) -> bool: ...
    def shutdown(self, reason: str, detail: str = "") -> None: ...


class VmApi:
    """The VM as plugins see it."""

    def __init__(self, machine: Machine) -> None:
        self._machine = machine

    # -- identity and state ------------------------------------------------------

    @property
    def name(self) -> str | None:
        """The ``-name`` of the guest."""
        return self._machine.name

    @property
    def state(self) -> str:
        """``prelaunch``, ``running``, ``paused`` or ``shutdown``."""
        return self._machine.run_state

    @property
    def memory(self) -> GuestMemoryProtocol:
        """Guest RAM with checked access."""
        return self._machine.memory

    @property
    def cmdline(self) -> Cmdline:
        """The kernel command line (append to it only while the VM is built)."""
        return self._machine.cmdline

    @property
    def vcpu_count(self) -> int:
        """Number of vCPUs."""
        return self._machine.vcpu_count

    def vcpu_thread_ids(self) -> list[int | None]:
        """The host thread id (``gettid``) of each vCPU's thread, by vCPU index (None
        before the threads start)."""
        return self._machine.vcpu_thread_ids()

    # -- event loops ---------------------------------------------------------------

    @property
    def main_loop(self) -> EventLoop:
        """The main thread's loop."""
        return self._machine.main_loop

    def loop_for(self, iothread: str | None) -> EventLoop:
        """The named iothread's loop, or the main loop for None (``ConfigError`` naming an
        undefined iothread)."""
        return self._machine.loop_for(iothread)

    # -- devices -------------------------------------------------------------------

    def irq_line(self, gsi: int) -> IrqLine:
        """An interrupt line to GSI ``gsi`` (irqfd-backed), for a device that is not virtio
        (a virtio device's window comes with its own)."""
        return self._machine.irq_line(gsi)

    def device(self, device_id: str) -> Any | None:
        """The device recorded under ``device_id``."""
        return self._machine.devices.get(device_id)

    def devices(self) -> Iterator[tuple[str, Any]]:
        """Every recorded (id, device)."""
        return iter(self._machine.devices.items())

    def state_for(self, owner: str) -> dict[str, Any]:
        """A dict private to ``owner`` (a plugin) that lives as long as the VM.

        For state a plugin keeps between QMP commands, e.g. block nodes made by
        ``blockdev-add`` and waiting for ``device_add``.
        """
        return self._machine.plugin_state.setdefault(owner, {})

    # -- hot-replace (QMP device_add / device_del) ---------------------------------------

    def hotplug_drivers(self) -> dict[str, HotplugDriver[Any]]:
        """Every registered ``device_add`` driver."""
        return self._machine.hotplug_drivers

    def hotplug_plug(self, driver: HotplugDriver[Any], addr: int, device_id: str,
                     args: dict[str, Any]) -> Any:
        """Fill the reserved slot ``addr`` of ``driver`` and record its device as
        ``device_id``; returns the device."""
        if self._machine.devices.get(device_id) is not None:
            raise ConfigError(f"id {device_id!r} is already in use")
        device = self._machine.virtio.plug(self, driver, addr, device_id, args)
        self._machine.devices.record(device_id, device)
        return device

    def hotplug_unplug(self, device_id: str) -> Any:
        """Empty the slot holding ``device_id`` (hot- or cold-plugged) and forget the
        device; returns it."""
        device = self._machine.virtio.unplug(self, device_id, self.hotplug_drivers())
        self._machine.devices.forget(device_id)
        return device

    # -- events --------------------------------------------------------------------

    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send a QMP event to every client."""
        self._machine.events.emit(name, data)

    def throttled_event(self, name: str, interval: float = 1.0) -> EventThrottle:
        """An emitter for an event the guest can trigger at will: ``.emit(data)`` from any
        thread sends ``name`` at most once per ``interval`` seconds with the latest data
        (QEMU throttles such events to one per second per type), logged at debug."""
        bus = self._machine.events

        def send(event: str, data: dict[str, Any]) -> None:
            bus.emit(event, data, level=logging.DEBUG)

        throttle = EventThrottle(name, send, self._machine.main_loop, interval)
        self._machine.throttles.append(throttle)     # flushed before SHUTDOWN
        return throttle

    # -- lifecycle (QMP stop / cont / quit) ------------------------------------------

    def pause(self) -> bool:
        """Park every vCPU and emit ``STOP``; False, doing nothing, unless the VM is
        running."""
        return self._machine.pause()

    def resume(self) -> bool:
        """Run the vCPUs again, or for the first time after ``-S``/``-freeze``; emits
        ``RESUME``; False, doing nothing, unless the VM is paused."""
        return self._machine.resume()

    def request_shutdown(self, reason: str, detail: str = "") -> None:
        """End the VM (``SHUTDOWN`` with ``reason``, exit status 0) once the main loop has
        finished what it is doing, e.g. sent the reply to QMP ``quit``."""
        machine = self._machine
        machine.main_loop.call_soon(lambda: machine.shutdown(reason, detail))

    # -- named fds (QMP getfd) -------------------------------------------------------

    def put_fd(self, name: str, fd: int) -> None:
        """Keep ``fd`` under ``name`` (QMP ``getfd``); a fd already there is closed.  At
        most ``MAX_NAMED_FDS`` names, so a client cannot pile fds up to the process limit:
        past that ``fd`` is closed and ``HostError`` raised."""
        named = self._machine.named_fds
        if name not in named and len(named) >= MAX_NAMED_FDS:
            os.close(fd)
            raise HostError(f"too many named file descriptors (at most {MAX_NAMED_FDS});"
                            " closefd some first")
        previous = named.pop(name, None)
        if previous is not None:
            os.close(previous)
        named[name] = fd

    def take_fd(self, name: str) -> int | None:
        """Remove and return the fd a QMP client passed with ``getfd`` under ``name``."""
        return self._machine.named_fds.pop(name, None)


BuildContext = VmApi

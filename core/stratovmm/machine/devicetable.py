"""The devices of one VM: what the factories return, attached, recorded by id, closed.

Every plugin's devices go through the same steps in the same order, so no plugin
can get them wrong or do them differently: the factory builds the device and
returns it (``stratovmm.devices.placement``); the table refuses an id already in
use, attaches the device (a virtio-mmio window, or a PIO/MMIO bus window),
records it, and closes it when any step after the factory fails.  At exit
``close_all`` closes every recorded device once.  ``device_add`` records the
device of the slot it filled and ``device_del`` forgets it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stratovmm.devices.placement import Built, Device, MmioWindow, PioWindow, VirtioSlot
from stratovmm.errors import ConfigError, PluginError, StratoVmmError

if TYPE_CHECKING:
    from stratovmm.host.eventloop import EventLoop
    from stratovmm.machine.bus import Bus
    from stratovmm.machine.slots import VirtioSlots
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import DeviceType

log = logging.getLogger(__name__)


class DeviceTable:
    """id → device for one VM, and the one way a built device gets into it."""

    def __init__(self, virtio: VirtioSlots, pio: Bus, mmio: Bus,
                 loop_for: Callable[[str | None], EventLoop]) -> None:
        self._virtio = virtio
        self._pio = pio
        self._mmio = mmio
        self._loop_for = loop_for
        self._devices: dict[str, Any] = {}

    # -- cold-plugged devices ---------------------------------------------------------------

    def create(self, device_type: DeviceType, owner: str, item: dict[str, Any],
               api: VmApi) -> Device:
        """Run ``device_type``'s factory (of plugin ``owner``) on ``item`` and add what it
        returns.  A factory's own ``StratoVmmError`` (a ``ConfigError`` naming the option)
        goes through; anything else it raises or returns is the plugin's fault and a
        ``PluginError`` naming it."""
        where = f"plugin {owner}: device {device_type.name}"
        try:
            built = device_type.create(api, item)
        except StratoVmmError:
            raise
        except Exception as exc:
            raise PluginError(f"{where}: the factory failed: {exc!r}") from exc
        if not isinstance(built, (VirtioSlot, PioWindow, MmioWindow, Device)):
            raise PluginError(f"{where}: the factory returned {built!r}, not a device (since"
                              " plugin API 1.1 a factory returns the device it built, and the"
                              " core attaches and records it)")
        return self.add(built)

    def add(self, built: Built) -> Device:
        """Attach and record the device ``built`` holds; closed again if either fails."""
        device = built if isinstance(built, Device) else built.device
        try:
            if device.id in self._devices:
                raise ConfigError(f"duplicate device id {device.id!r}")
            self._attach(built)
        except BaseException:
            device.close()
            raise
        self._devices[device.id] = device
        return device

    def _attach(self, built: Built) -> None:
        if isinstance(built, VirtioSlot):
            self._virtio.attach(built.device, self._loop_for(built.iothread))
        elif isinstance(built, (PioWindow, MmioWindow)):
            bus = self._pio if isinstance(built, PioWindow) else self._mmio
            try:
                bus.insert(built.device, built.base, built.length, built.device.id)
            except ValueError as exc:        # overlapping another window, or empty
                raise ConfigError(f"device {built.device.id}: {exc}") from None
        else:
            # imported here: a VM whose devices are all bus windows (the serial port alone)
            # does not import the virtio models at start-up
            from stratovmm.virtio.device import VirtioDevice

            if isinstance(built, VirtioDevice):
                self._virtio.attach(built, self._loop_for(None))

    # -- hot-replace ----------------------------------------------------------------------------

    def record(self, device_id: str, device: Any) -> None:
        """``device_add`` filled a slot: its device is ``device_id`` from now on."""
        if device_id in self._devices:
            raise ConfigError(f"duplicate device id {device_id!r}")
        self._devices[device_id] = device

    def forget(self, device_id: str) -> Any:
        """``device_del`` emptied the slot of ``device_id``; returns its device."""
        return self._devices.pop(device_id)

    # -- lookup and exit ------------------------------------------------------------------------

    def get(self, device_id: str) -> Any | None:
        """The device recorded under ``device_id``."""
        return self._devices.get(device_id)

    def items(self) -> list[tuple[str, Any]]:
        """Every recorded (id, device), in the order they were recorded."""
        return list(self._devices.items())

    def close_all(self) -> None:
        """Close every recorded device (the VM ends); a failure is logged and the others
        are still closed."""
        for device_id, device in self.items():
            try:
                device.close()
            except Exception:
                log.exception("closing device %s failed", device_id)

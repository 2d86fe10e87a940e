"""The StratoVMM plugin API: everything a plugin may import from the core, in one place.

A plugin imports the core only from here (its tests also from
``stratovmm.testing``), as a tox plugin imports only ``tox.plugin``::

    from stratovmm.api import BuildContext, DeviceRegistry, DeviceType, OptionSpec, hookimpl

``__all__`` is the supported surface, versioned by ``API_VERSION``: a new minor
version only adds to it, a new major version may change or remove what is
here.  Every other module of ``stratovmm`` is the core's own and may change in
any release; ``tests/unit/test_meta_api.py`` fails when a shipped plugin, the
example or the plugin template imports one.  The names are grouped as the
plugin guide (``docs/plugins.md``) explains them:

- hooks and registration: ``hookimpl``, the registry views a hook is given and
  what goes into them (``DeviceType``, ``OptionSpec`` with ``SubOption`` and
  ``Join``, ``QmpCommand``,
  ``HotplugDriver``, ``SeccompRules`` with ``ArgCondition``), ``RuntimeOptions``;
- building and running: ``BuildContext``/``VmApi``, what a factory returns
  (``Device``, ``VirtioSlot``, ``PioWindow``, ``MmioWindow``), ``BackendTable``;
- device models: ``VirtioDevice`` and its descriptor chains, ``RegisterDevice``,
  ``DeviceCounters``, the memory protocol, ``EventLoop``, ``TokenBucket``, the
  vhost-kernel hand-over, the virtio numbers and memory-map constants devices use;
- errors: the VMM's exception tree and the QMP error classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stratovmm.boot.cmdline import Cmdline
    from stratovmm.boot.layout import (
        PLUGIN_MMIO_END,
        PLUGIN_MMIO_START,
        VIRTIO_MMIO_BASE,
        VIRTIO_MMIO_SIZE,
        VIRTIO_MMIO_SLOTS,
    )
    from stratovmm.config.core_options import ITEM_ID_SCHEMA, whole_string
    from stratovmm.config.model import RuntimeOptions
    from stratovmm.devices.counters import DeviceCounters
    from stratovmm.devices.placement import (
        Built,
        BusDevice,
        Device,
        MmioWindow,
        PioWindow,
        VirtioSlot,
    )
    from stratovmm.devices.ratelimit import TokenBucket
    from stratovmm.devices.regdevice import RegisterDevice
    from stratovmm.errors import (
        ConfigError,
        GuestError,
        GuestMemoryError,
        HostError,
        HotplugError,
        PluginError,
        StratoVmmError,
    )
    from stratovmm.host.eventloop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EventLoop, Timer
    from stratovmm.host.pty import Pty
    from stratovmm.host.unixsock import UnixListener, check_socket_path
    from stratovmm.machine.hotplug import BackendTable
    from stratovmm.machine.irq import IrqLine
    from stratovmm.machine.vmapi import BuildContext, VmApi
    from stratovmm.memory import GuestMemoryProtocol, Region
    from stratovmm.plugin import API_VERSION, hookimpl
    from stratovmm.qmp.errors import (
        CommandNotFound,
        DeviceNotActive,
        DeviceNotFound,
        GenericError,
        KVMMissingCap,
        OperationThrottled,
        QmpError,
    )
    from stratovmm.qmp.events import EventThrottle
    from stratovmm.registry import (
        ArgCondition,
        DeviceRegistry,
        DeviceType,
        HotplugDriver,
        Join,
        OptionSpec,
        QmpCommand,
        QmpRegistry,
        SeccompRules,
        SubOption,
        ValueKind,
    )
    from stratovmm.virtio.chain import (
        Descriptor,
        DescriptorChain,
        gather,
        scatter,
        skip_views,
        trim_views,
    )
    from stratovmm.virtio.constants import (
        F_EVENT_IDX,
        F_INDIRECT_DESC,
        F_VERSION_1,
        ID_BALLOON,
        ID_BLOCK,
        ID_CONSOLE,
        ID_NET,
        ID_RNG,
        ID_VSOCK,
    )
    from stratovmm.virtio.device import (
        BASE_FEATURES,
        SERVE_BUDGET,
        STOP,
        Frames,
        HeldChains,
        VirtioDevice,
    )
    from stratovmm.virtio.native import NativeHandler
    from stratovmm.virtio.queue import SplitQueue
    from stratovmm.virtio.vhost import (
        RING_IOCTLS,
        VHOST_GET_FEATURES,
        VHOST_GET_VRING_BASE,
        VHOST_SET_FEATURES,
        VHOST_SET_MEM_TABLE,
        VHOST_SET_OWNER,
        VHOST_SET_VRING_ADDR,
        VHOST_SET_VRING_BASE,
        VHOST_SET_VRING_CALL,
        VHOST_SET_VRING_KICK,
        VHOST_SET_VRING_NUM,
        Ioctl,
        VhostBackend,
        VhostRings,
        vhost_io,
        vhost_ior,
        vhost_iow,
        vhost_iowr,
    )


__all__ = [
    "API_VERSION",
    "BASE_FEATURES",
    "EPOLLERR",
    "EPOLLHUP",
    "EPOLLIN",
    "EPOLLOUT",
    "F_EVENT_IDX",
    "F_INDIRECT_DESC",
    "F_VERSION_1",
    "ID_BALLOON",
    "ID_BLOCK",
    "ID_CONSOLE",
    "ID_NET",
    "ID_RNG",
    "ID_VSOCK",
    "ITEM_ID_SCHEMA",
    "PLUGIN_MMIO_END",
    "PLUGIN_MMIO_START",
    "RING_IOCTLS",
    "SERVE_BUDGET",
    "STOP",
    "VHOST_GET_FEATURES",
    "VHOST_GET_VRING_BASE",
    "VHOST_SET_FEATURES",
    "VHOST_SET_MEM_TABLE",
    "VHOST_SET_OWNER",
    "VHOST_SET_VRING_ADDR",
    "VHOST_SET_VRING_BASE",
    "VHOST_SET_VRING_CALL",
    "VHOST_SET_VRING_KICK",
    "VHOST_SET_VRING_NUM",
    "VIRTIO_MMIO_BASE",
    "VIRTIO_MMIO_SIZE",
    "VIRTIO_MMIO_SLOTS",
    "ArgCondition",
    "BackendTable",
    "BuildContext",
    "Built",
    "BusDevice",
    "Cmdline",
    "CommandNotFound",
    "ConfigError",
    "Descriptor",
    "DescriptorChain",
    "Device",
    "DeviceCounters",
    "DeviceNotActive",
    "DeviceNotFound",
    "DeviceRegistry",
    "DeviceType",
    "EventLoop",
    "EventThrottle",
    "Frames",
    "GenericError",
    "GuestError",
    "GuestMemoryError",
    "GuestMemoryProtocol",
    "HeldChains",
    "HostError",
    "HotplugDriver",
    "HotplugError",
    "Ioctl",
    "IrqLine",
    "Join",
    "KVMMissingCap",
    "MmioWindow",
    "NativeHandler",
    "OperationThrottled",
    "OptionSpec",
    "PioWindow",
    "PluginError",
    "Pty",
    "QmpCommand",
    "QmpError",
    "QmpRegistry",
    "Region",
    "RegisterDevice",
    "RuntimeOptions",
    "SeccompRules",
    "SplitQueue",
    "StratoVmmError",
    "SubOption",
    "Timer",
    "TokenBucket",
    "UnixListener",
    "ValueKind",
    "VhostBackend",
    "VhostRings",
    "VirtioDevice",
    "VirtioSlot",
    "VmApi",
    "check_socket_path",
    "gather",
    "hookimpl",
    "scatter",
    "skip_views",
    "trim_views",
    "vhost_io",
    "vhost_ior",
    "vhost_iow",
    "vhost_iowr",
    "whole_string",
]

# where each name of ``__all__`` is defined: imported from there on first use
_SOURCES: dict[str, tuple[str, ...]] = {
    "stratovmm.boot.cmdline": ("Cmdline",),
    "stratovmm.boot.layout": (
        "PLUGIN_MMIO_END", "PLUGIN_MMIO_START", "VIRTIO_MMIO_BASE", "VIRTIO_MMIO_SIZE",
        "VIRTIO_MMIO_SLOTS",
    ),
    "stratovmm.config.core_options": ("ITEM_ID_SCHEMA", "whole_string"),
    "stratovmm.config.model": ("RuntimeOptions",),
    "stratovmm.devices.counters": ("DeviceCounters",),
    "stratovmm.devices.placement": (
        "Built", "BusDevice", "Device", "MmioWindow", "PioWindow", "VirtioSlot",
    ),
    "stratovmm.devices.ratelimit": ("TokenBucket",),
    "stratovmm.devices.regdevice": ("RegisterDevice",),
    "stratovmm.errors": (
        "ConfigError", "GuestError", "GuestMemoryError", "HostError", "HotplugError",
        "PluginError", "StratoVmmError",
    ),
    "stratovmm.host.eventloop": (
        "EPOLLERR", "EPOLLHUP", "EPOLLIN", "EPOLLOUT", "EventLoop", "Timer",
    ),
    "stratovmm.host.pty": ("Pty",),
    "stratovmm.host.unixsock": ("UnixListener", "check_socket_path"),
    "stratovmm.machine.hotplug": ("BackendTable",),
    "stratovmm.machine.irq": ("IrqLine",),
    "stratovmm.machine.vmapi": ("BuildContext", "VmApi"),
    "stratovmm.memory": ("GuestMemoryProtocol", "Region"),
    "stratovmm.plugin": ("API_VERSION", "hookimpl"),
    "stratovmm.qmp.errors": (
        "CommandNotFound", "DeviceNotActive", "DeviceNotFound", "GenericError", "KVMMissingCap",
        "OperationThrottled", "QmpError",
    ),
    "stratovmm.qmp.events": ("EventThrottle",),
    "stratovmm.registry": (
        "ArgCondition", "DeviceRegistry", "DeviceType", "HotplugDriver", "Join", "OptionSpec",
        "QmpCommand", "QmpRegistry", "SeccompRules", "SubOption", "ValueKind",
    ),
    "stratovmm.virtio.chain": (
        "Descriptor", "DescriptorChain", "gather", "scatter", "skip_views", "trim_views",
    ),
    "stratovmm.virtio.constants": (
        "F_EVENT_IDX", "F_INDIRECT_DESC", "F_VERSION_1", "ID_BALLOON", "ID_BLOCK", "ID_CONSOLE",
        "ID_NET", "ID_RNG", "ID_VSOCK",
    ),
    "stratovmm.virtio.device": (
        "BASE_FEATURES", "SERVE_BUDGET", "STOP", "Frames", "HeldChains", "VirtioDevice",
    ),
    "stratovmm.virtio.native": ("NativeHandler",),
    "stratovmm.virtio.queue": ("SplitQueue",),
    "stratovmm.virtio.vhost": (
        "RING_IOCTLS", "VHOST_GET_FEATURES", "VHOST_GET_VRING_BASE", "VHOST_SET_FEATURES",
        "VHOST_SET_MEM_TABLE", "VHOST_SET_OWNER", "VHOST_SET_VRING_ADDR", "VHOST_SET_VRING_BASE",
        "VHOST_SET_VRING_CALL", "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_NUM", "Ioctl",
        "VhostBackend", "VhostRings", "vhost_io", "vhost_ior", "vhost_iow", "vhost_iowr",
    ),
}

_SOURCES_OF = {name: module for module, names in _SOURCES.items() for name in names}


if not TYPE_CHECKING:  # mypy reads the imports above; a module __getattr__ would hide typos

    def __getattr__(name: str) -> Any:
        """Import a name's module on first use (PEP 562): a VM imports only the parts of
        the core its devices use (one without virtio devices never imports the virtio
        models), and ``from stratovmm.api import X`` works as before."""
        module = _SOURCES_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The module's names, the ones not imported yet included."""
    return sorted({*globals(), *__all__})

"""The hookimpls of the balloon plugin: ``-balloon deflate-on-oom=on|off`` / ``"balloon"`` (and
StratoVirt 2.x's ``-device virtio-balloon-device``), QMP ``balloon`` and ``query-balloon``,
and the ``BALLOON_CHANGED`` event.

Sizes on the QMP side are guest memory sizes in bytes, as in QEMU and
StratoVirt: ``balloon value=V`` asks for a balloon of ``(RAM - V) / 4096``
pages (a ``V`` at or above RAM empties it), ``query-balloon`` and
``BALLOON_CHANGED`` report ``RAM - actual * 4096``.

The device model is imported when it is first needed, so that a VM without a balloon
does not pay for importing it at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stratovmm.api import (
    BuildContext,
    DeviceNotActive,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    QmpCommand,
    QmpRegistry,
    SeccompRules,
    SubOption,
    ValueKind,
    VmApi,
    hookimpl,
)
from stratovmm_balloon.schema import (
    BALLOON_CHANGED_SCHEMA,
    BALLOON_COMMAND_SCHEMA,
    BALLOON_INFO_SCHEMA,
    BALLOON_SCHEMA,
    QUERY_BALLOON_SCHEMA,
)

if TYPE_CHECKING:
    from stratovmm_balloon.device import BalloonDevice

STRATOVMM_API = "1.1"

DEVICE_ID = "balloon"
EVENT = "BALLOON_CHANGED"

BALLOON_OPTION = OptionSpec(
    "balloon", "virtio-balloon (QMP balloon / query-balloon)", "balloon",
    sub=(SubOption("deflate-on-oom", "deflate_on_oom", ValueKind.BOOL,
                   help="let the guest deflate under memory pressure"
                        " (VIRTIO_BALLOON_F_DEFLATE_ON_OOM)"),),
    metavar="deflate-on-oom=on|off",
)


BALLOON_DEVICE_OPTION = OptionSpec(
    "device", "virtio-balloon (StratoVirt 2.x's spelling of -balloon)", "balloon",
    driver="virtio-balloon-device",
    sub=(SubOption("deflate-on-oom", "deflate_on_oom", ValueKind.BOOL,
                   help="let the guest deflate under memory pressure"),
         SubOption("free-page-reporting", None, values={"off": False, "false": False},
                   help="off (free page reporting is not offered)"),
         SubOption("id", None, help="accepted (the device's id is balloon)")),
    metavar="[deflate-on-oom=on|off][,id=ID]",
)


def create_balloon(ctx: BuildContext, item: dict[str, Any]) -> BalloonDevice:
    """Build the balloon (id ``balloon``), served on the main loop."""
    from stratovmm_balloon.device import PAGE_SHIFT, BalloonDevice

    ram_size = ctx.memory.size
    # the guest writes actual at will: coalesced to the latest value, one event per second
    changed = ctx.throttled_event(EVENT)

    def actual_changed(pages: int) -> None:
        # write_config runs on a vCPU thread: the event leaves from the main loop
        changed.emit({"actual": ram_size - (pages << PAGE_SHIFT)})

    return BalloonDevice(DEVICE_ID, ram_size, ctx.main_loop, item.get("deflate_on_oom", False),
                         actual_changed)


def _balloon(vm: VmApi) -> BalloonDevice:
    from stratovmm_balloon.device import BalloonDevice

    device = vm.device(DEVICE_ID)
    if not isinstance(device, BalloonDevice):
        raise DeviceNotActive("No balloon device has been activated")
    return device


def qmp_balloon(vm: VmApi, args: dict[str, Any]) -> None:
    """Set the guest memory size the balloon aims at; the guest driver follows in its own
    time (watch ``BALLOON_CHANGED`` or ``query-balloon``).  ``value`` >= 1 is checked by
    the schema; a value at or above RAM means an empty balloon (QEMU and StratoVirt clamp
    the same way)."""
    from stratovmm_balloon.device import PAGE_SHIFT

    device = _balloon(vm)
    ram_size = vm.memory.size
    value = min(int(args["value"]), ram_size)
    device.request_target((ram_size - value) >> PAGE_SHIFT)


def qmp_query_balloon(vm: VmApi, _args: dict[str, Any]) -> dict[str, int]:
    """``{"actual": BYTES}``: RAM minus the pages the driver reports in the balloon."""
    from stratovmm_balloon.device import PAGE_SHIFT

    device = _balloon(vm)
    return {"actual": vm.memory.size - (device.actual << PAGE_SHIFT)}


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-balloon`` and ``"balloon"``; 2.x's ``-device virtio-balloon-device``."""
    registry.add_device_type(DeviceType("balloon", BALLOON_OPTION, BALLOON_SCHEMA,
                                        create_balloon))
    registry.add_option(BALLOON_DEVICE_OPTION)


@hookimpl
def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
    """``balloon``, ``query-balloon`` and the ``BALLOON_CHANGED`` event."""
    registry.add_command(QmpCommand("balloon", qmp_balloon, BALLOON_COMMAND_SCHEMA,
                                    help="set the target guest memory size (bytes)"))
    registry.add_command(QmpCommand("query-balloon", qmp_query_balloon, QUERY_BALLOON_SCHEMA,
                                    returns=BALLOON_INFO_SCHEMA,
                                    help="guest memory size: RAM minus the balloon (bytes)"))
    registry.add_event(EVENT, BALLOON_CHANGED_SCHEMA)


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Inflating gives pages back with ``madvise`` (also in the core's list; said here so the
    plugin does not depend on that)."""
    rules.allow("madvise")

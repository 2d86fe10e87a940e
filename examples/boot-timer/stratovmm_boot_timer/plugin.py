"""The hookimpls of the boot-timer plugin: ``-device boot-timer[,addr=ADDR]`` /
``"boot_timer": {"addr": ADDR}``, QMP ``query-boot-time`` and the ``BOOT_TIMER`` event.

The guest writes 123 to ``ADDR`` (default 0xd1000000, above the virtio-mmio
windows) once it has booted; the VMM logs ``Guest-boot-time = N us`` (at info
level, as Firecracker) and emits ``BOOT_TIMER {"elapsed_us", "cpu_us"}`` to every
QMP client.  Uses only the plugin API (``stratovmm.api``): no core change is needed.
"""

from __future__ import annotations

import logging
from typing import Any

from stratovmm.api import (
    PLUGIN_MMIO_END,
    PLUGIN_MMIO_START,
    BuildContext,
    ConfigError,
    DeviceNotFound,
    DeviceRegistry,
    DeviceType,
    MmioWindow,
    OptionSpec,
    QmpCommand,
    QmpRegistry,
    SeccompRules,
    SubOption,
    VmApi,
    hookimpl,
)

from stratovmm_boot_timer.device import WINDOW, BootTime, BootTimer
from stratovmm_boot_timer.schema import (
    BOOT_TIMER_EVENT_SCHEMA,
    BOOT_TIMER_SCHEMA,
    QUERY_BOOT_TIME_RETURNS,
)

STRATOVMM_API = "1.1"

log = logging.getLogger(__name__)

DEVICE_ID = "boot-timer"          # the id under which query-stats reports it
EVENT = "BOOT_TIMER"
DEFAULT_ADDR = 0xD100_0000
WHERE = "-device boot-timer addr"

BOOT_TIMER_OPTION = OptionSpec(
    "device", "boot timer: the guest writes 123 at ADDR when booted (QMP BOOT_TIMER)",
    "boot_timer", driver="boot-timer",
    sub=(SubOption("addr", "addr", help=f"guest physical address (default {DEFAULT_ADDR:#x})"),),
    metavar="[addr=ADDR]",
)


def parse_addr(value: int | str) -> int:
    """``addr`` as a number (the schema already checked its spelling)."""
    return value if isinstance(value, int) else int(value, 0)


def check_addr(addr: int) -> None:
    """A window the guest can reach: page aligned, in the part of the MMIO hole left free
    for plugins (past the virtio-mmio windows, below the IOAPIC; RAM is never there, so
    every access exits to the VMM)."""
    if addr % WINDOW:
        raise ConfigError(f"{WHERE}: {addr:#x} is not 4 KiB aligned")
    if not (addr >= PLUGIN_MMIO_START and addr + WINDOW <= PLUGIN_MMIO_END):
        raise ConfigError(f"{WHERE}: {addr:#x} is outside the free MMIO range"
                          f" [{PLUGIN_MMIO_START:#x}, {PLUGIN_MMIO_END:#x})")


def create_boot_timer(ctx: BuildContext, item: dict[str, Any]) -> MmioWindow:
    """The timer and its window (the core claims it and records the device); the report
    goes through the main loop."""
    addr = parse_addr(item.get("addr", DEFAULT_ADDR))

    def on_boot(boot: BootTime) -> None:        # on the vCPU thread: hand over, return
        ctx.main_loop.call_soon(lambda: announce(ctx, boot))

    log.info("boot timer at %#x: the guest writes 123 there when booted", addr)
    return MmioWindow(BootTimer(DEVICE_ID, on_boot), addr, WINDOW)


def announce(vm: VmApi, boot: BootTime) -> None:
    """Log the boot time (Firecracker's wording) and tell every QMP client."""
    log.info("Guest-boot-time = %6d us %d ms, %6d CPU us %d CPU ms", boot.elapsed_us,
             boot.elapsed_us // 1000, boot.cpu_us, boot.cpu_us // 1000)
    vm.emit_event(EVENT, {"elapsed_us": boot.elapsed_us, "cpu_us": boot.cpu_us})


def query_boot_time(vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """The boot time, once the guest has signalled (``booted`` false until then)."""
    timer = vm.device(DEVICE_ID)
    if not isinstance(timer, BootTimer):
        raise DeviceNotFound("no boot timer in this VM (start it with -device boot-timer)")
    boot = timer.boot_time
    out: dict[str, Any] = {"booted": boot is not None, "signals": timer.signals}
    if boot is not None:
        out.update(elapsed_us=boot.elapsed_us, cpu_us=boot.cpu_us)
    return out


# -- hookimpls -----------------------------------------------------------------------------


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-device boot-timer`` and ``"boot_timer"``."""
    registry.add_device_type(DeviceType("boot-timer", BOOT_TIMER_OPTION, BOOT_TIMER_SCHEMA,
                                        create_boot_timer))


@hookimpl
def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
    """``query-boot-time`` and the ``BOOT_TIMER`` event."""
    registry.add_command(QmpCommand("query-boot-time", query_boot_time,
                                    returns=QUERY_BOOT_TIME_RETURNS,
                                    help="when the guest signalled boot completion"))
    registry.add_event(EVENT, BOOT_TIMER_EVENT_SCHEMA)


@hookimpl
def vmm_check_config(config: dict[str, Any]) -> None:
    """Refuse a window the guest could not reach, before anything is built."""
    item = config.get("boot_timer")
    if item is not None:
        check_addr(parse_addr(item.get("addr", DEFAULT_ADDR)))


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Reading the clocks when the guest signals (the vDSO serves CLOCK_BOOTTIME, but a
    process CPU-time clock is a real clock_gettime system call)."""
    rules.allow("clock_gettime")


@hookimpl
def vmm_vm_shutdown(vm: VmApi) -> None:
    """Say so when the guest never signalled (a boot benchmark would otherwise wait)."""
    timer = vm.device(DEVICE_ID)
    if isinstance(timer, BootTimer) and timer.boot_time is None:
        log.info("boot timer: the guest never wrote 123 to its register")

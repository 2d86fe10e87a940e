"""The hookimpls of the serial plugin: ``-serial stdio`` / ``"serial": {"stdio": true}``, and
StratoVirt 2.x's ``-serial chardev:ID`` naming a ``-chardev stdio``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stratovmm.api import (
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    Join,
    OptionSpec,
    PioWindow,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    hookimpl,
)
from stratovmm_serial.device import WINDOW, Uart16550
from stratovmm_serial.schema import SERIAL_SCHEMA
from stratovmm_serial.stdio import StdioBackend

STRATOVMM_API = "1.1"

PORT_BASE = 0x3F8   # COM1: what console=ttyS0 probes
IRQ = 4             # COM1's ISA IRQ (the MP table routes it to IOAPIC pin 4)

SERIAL_OPTION = OptionSpec(
    "serial", "legacy 16550A UART on ttyS0 bound to stdio", "serial", implied="backend",
    sub=(SubOption("backend", "stdio", values={"stdio": True}, help="only stdio"),),
    metavar="stdio",
)


def serial_from_chardev(values: Mapping[str, Any], chardev: Mapping[str, Any]) -> dict[str, Any]:
    """``-serial chardev:ID`` as the ``serial`` item: the UART is bound to stdio here, so the
    chardev must be ``-chardev stdio`` (2.x also binds it to a socket, file or pty)."""
    ident = values["chardev"]
    if chardev["kind"] != "stdio":
        raise ValueError(f"chardev {ident!r} is {chardev['kind']}; the serial port here is"
                         f" bound to stdio only (-chardev stdio,id={ident})")
    return {"stdio": True}


# StratoVirt 2.x's spelling (machine_manager/src/config/chardev.rs, parse_serial): the word
# chardev, a colon and the id of a -chardev.
SERIAL_CHARDEV_OPTION = OptionSpec(
    "serial", "the UART on a -chardev stdio (StratoVirt 2.x)", "serial", driver="chardev",
    implied="chardev", sub=(SubOption("chardev", None, required=True, help="a -chardev id"),),
    join=Join("chardev", "chardev", serial_from_chardev), metavar="chardev:ID",
)


def create_serial(ctx: BuildContext, item: dict[str, Any]) -> PioWindow:
    """Build the UART for COM1's ports and, with ``stdio``, bind it to the terminal."""
    irq = ctx.irq_line(IRQ)
    backend = StdioBackend(ctx.main_loop) if item["stdio"] else None
    uart = Uart16550(
        out=backend.write if backend else (lambda _data: None),
        irq=irq.trigger,
        on_rx_space=backend.rx_space_available if backend else None,
        on_close=backend.close if backend else None,
    )
    if backend is not None:
        backend.attach(uart)
    return PioWindow(uart, PORT_BASE, WINDOW)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-serial stdio`` and 2.x's ``-serial chardev:ID``."""
    registry.add_device_type(DeviceType("serial", SERIAL_OPTION, SERIAL_SCHEMA, create_serial))
    registry.add_option(SERIAL_CHARDEV_OPTION)


@hookimpl
def vmm_check_config(config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """``-daemonize`` closes stdio, so it cannot carry the serial console."""
    if runtime.daemonize and config.get("serial", {}).get("stdio"):
        raise ConfigError("-serial stdio: not allowed with -daemonize (stdio is closed)")


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """stdin/stdout I/O and restoring the terminal mode (tcsetattr is an ioctl)."""
    import termios

    rules.allow("read", "write")
    rules.allow_ioctl(termios.TCSETS, termios.TCSETSW, termios.TCGETS)

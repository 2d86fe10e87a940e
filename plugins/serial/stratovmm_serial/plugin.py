"""The hookimpls of the serial plugin: ``-serial stdio`` / ``"serial": {"stdio": true}``."""

from __future__ import annotations

from typing import Any

from stratovmm.api import (
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    PioWindow,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    hookimpl,
)
from stratovmm_serial.device import Uart16550
from stratovmm_serial.schema import SERIAL_SCHEMA
from stratovmm_serial.stdio import StdioBackend

STRATOVMM_API = "1.1"

PORT_BASE = 0x3F8   # COM1: what console=ttyS0 probes
PORT_COUNT = 8
IRQ = 4             # COM1's ISA IRQ (the MP table routes it to IOAPIC pin 4)

SERIAL_OPTION = OptionSpec(
    "serial", "legacy 16550A UART on ttyS0 bound to stdio", "serial", implied="backend",
    sub=(SubOption("backend", "stdio", values={"stdio": True}, help="only stdio"),),
    metavar="stdio",
)


class SerialDevice:
    """The UART on COM1's ports and its backend, recorded under the id ``serial``."""

    id = "serial"

    def __init__(self, uart: Uart16550, backend: StdioBackend | None) -> None:
        self.uart = uart
        self.backend = backend

    def read(self, offset: int, size: int) -> bytes:
        """A guest read of a UART register (vCPU thread)."""
        return self.uart.read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        """A guest write of a UART register (vCPU thread)."""
        self.uart.write(offset, data)

    def stats(self) -> dict[str, int]:
        """Bytes each way, under the names every device uses (QMP ``query-stats``):
        ``bytes_written`` the guest sent to the host, ``bytes_read`` the host gave it."""
        return {"bytes_written": self.uart.tx_bytes, "bytes_read": self.uart.rx_bytes}

    def close(self) -> None:
        """Restore the terminal."""
        if self.backend is not None:
            self.backend.close()


def create_serial(ctx: BuildContext, item: dict[str, Any]) -> PioWindow:
    """Build the UART for COM1's ports and, with ``stdio``, bind it to the terminal."""
    irq = ctx.irq_line(IRQ)
    backend = StdioBackend(ctx.main_loop) if item["stdio"] else None
    uart = Uart16550(
        out=backend.write if backend else (lambda _data: None),
        irq=irq.trigger,
        on_rx_space=backend.rx_space_available if backend else None,
    )
    if backend is not None:
        backend.attach(uart)
    return PioWindow(SerialDevice(uart, backend), PORT_BASE, PORT_COUNT)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-serial stdio``."""
    registry.add_device_type(DeviceType("serial", SERIAL_OPTION, SERIAL_SCHEMA, create_serial))


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

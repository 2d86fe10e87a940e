"""The hookimpls of the console plugin: ``-chardev id=ID,path=SOCKET`` / ``"console"``."""

from __future__ import annotations

import termios
from typing import Any

from stratovmm.api import (
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    ValueKind,
    check_socket_path,
    hookimpl,
)
from stratovmm_console.backend import ConsoleSocket
from stratovmm_console.device import ConsoleDevice
from stratovmm_console.schema import CONSOLE_SCHEMA

STRATOVMM_API = "1.1"

# Linux's hvc tty driver has 8 lines (HVC_ALLOC_TTY_ADAPTERS): /dev/hvc0 .. /dev/hvc7.
MAX_CONSOLES = 8

CHARDEV_OPTION = OptionSpec(
    "chardev", "virtio-console on a unix socket server; guest /dev/hvc0.. (repeatable)",
    "console", repeatable=True, id_field="console_id",
    sub=(SubOption("id", "console_id", required=True),
         SubOption("path", "socket_path", ValueKind.PATH, required=True,
                   help="unix socket the VMM listens on (one client at a time, newest wins)")),
    metavar="id=ID,path=SOCKET",
)


def _where(item: dict[str, Any]) -> str:
    return f"-chardev path (console {item['console_id']!r})"


def create_console(ctx: BuildContext, item: dict[str, Any]) -> ConsoleDevice:
    """Listen on the socket and build a virtio-console for one ``console`` item (closing
    the device closes the socket)."""
    port = ConsoleSocket(item["socket_path"], ctx.main_loop, _where(item))
    return ConsoleDevice(item["console_id"], port)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-chardev`` and ``"console"``."""
    registry.add_device_type(DeviceType("console", CHARDEV_OPTION, CONSOLE_SCHEMA,
                                        create_console))


@hookimpl
def vmm_check_config(config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """At most 8 consoles, each on its own socket path where a socket can be created.

    Checked before any device exists, so a bad second path never leaves the first
    socket behind.
    """
    items = config.get("console", [])
    if len(items) > MAX_CONSOLES:
        raise ConfigError(f"-chardev: {len(items)} consoles, at most {MAX_CONSOLES}"
                          " (the guest has /dev/hvc0 to /dev/hvc7)")
    owners: dict[str, str] = {}
    for item in items:
        path = check_socket_path(item["socket_path"], _where(item))
        if path in owners:
            raise ConfigError(f"{_where(item)}: {path} is already the socket of console"
                              f" {owners[path]!r}")
        owners[path] = item["console_id"]


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Accepting clients, socket I/O (sendmsg/recvmsg on guest memoryviews), closing
    them, and removing the socket file at exit; setblocking is ioctl FIONBIO."""
    rules.allow("accept4", "sendmsg", "recvmsg", "epoll_ctl", "close", "newfstatat", "unlink")
    rules.allow_ioctl(termios.FIONBIO)

"""The hookimpls of the console plugin: ``-chardev id=ID,path=SOCKET`` / ``"console"``, and
StratoVirt 2.x's ``-device virtio-serial-device`` + ``-device virtconsole,chardev=ID`` on a
``-chardev socket``, ``file`` or ``pty``.

The device model and its ports are imported when a console is built, so that a VM without
one does not pay for importing them at start-up."""

from __future__ import annotations

import os
import termios
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.api import (
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    Join,
    OptionSpec,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    ValueKind,
    check_socket_path,
    hookimpl,
)
from stratovmm_console.schema import CONSOLE_SCHEMA

if TYPE_CHECKING:
    from stratovmm_console.device import ConsoleDevice, ConsolePort

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


def console_from_chardev(values: Mapping[str, Any], chardev: Mapping[str, Any]) -> dict[str, Any]:
    """``-device virtconsole,chardev=ID,id=PORT[,nr=0]`` over a ``-chardev socket``,
    ``file`` or ``pty`` as a ``console`` item.  Each virtconsole is port 0 of a
    virtio-console device of its own (StratoVirt 2.x's microvm has one port per
    virtio-serial-device too, so ``nr`` is 0); a socket must listen and not wait, as 2.x's
    chardev back end requires."""
    ident = values["chardev"]
    if values.get("nr", 0) != 0:
        raise ValueError(f"nr={values['nr']}: each virtconsole is port 0 of its own"
                         " virtio-console device here")
    if chardev["kind"] == "file":
        return {"console_id": values["id"], "file_path": chardev["path"]}
    if chardev["kind"] == "pty":
        return {"console_id": values["id"], "pty": True, "chardev_id": ident}
    if chardev["kind"] != "socket":
        raise ValueError(f"chardev {ident!r} is {chardev['kind']}; the console serves a unix"
                         f" socket (-chardev socket,id={ident},path=PATH,server,nowait), a"
                         f" file (-chardev file,id={ident},path=PATH) or a pty (-chardev"
                         f" pty,id={ident})")
    if not (chardev.get("server") and chardev.get("nowait")):
        raise ValueError(f"chardev {ident!r} needs both server and nowait (the console socket"
                         " listens and does not wait for a client)")
    return {"console_id": values["id"], "socket_path": chardev["path"]}


# StratoVirt 2.x's spelling (machine_manager/src/config/chardev.rs): the virtio-serial bus,
# then a console port on it that names a -chardev.
VIRTIO_SERIAL_OPTION = OptionSpec(
    "device", "the virtio-serial bus a -device virtconsole sits on (StratoVirt 2.x; at most"
    " one)", "virtio-serial", driver="virtio-serial-device", backend=True, file_key=False,
    id_field="id", sub=(SubOption("id", "id"),
                        SubOption("max_ports", None, ValueKind.INT, help="accepted")),
    metavar="[id=ID]",
)

VIRTCONSOLE_OPTION = OptionSpec(
    "device", "virtio-console on a -chardev socket, file or pty; guest /dev/hvc0.."
    " (StratoVirt 2.x)",
    "console", driver="virtconsole", repeatable=True, id_field="console_id",
    sub=(SubOption("chardev", None, required=True, help="a -chardev socket, file or pty id"),
         SubOption("id", "console_id", required=True),
         SubOption("nr", None, ValueKind.INT, help="the port number: 0")),
    join=Join("chardev", "chardev", console_from_chardev, needs="virtio-serial"),
    metavar="chardev=ID,id=ID[,nr=0]",
)


def _where(item: dict[str, Any]) -> str:
    return f"-chardev path (console {item['console_id']!r})"


def create_console(ctx: BuildContext, item: dict[str, Any]) -> ConsoleDevice:
    """Listen on the socket (or open the file or a new pty) and build a virtio-console for
    one ``console`` item (closing the device closes the socket, the file or the pty)."""
    from stratovmm_console.backend import ConsoleSocket
    from stratovmm_console.device import ConsoleDevice
    from stratovmm_console.logfile import ConsoleFile
    from stratovmm_console.ptyport import ConsolePty

    port: ConsolePort
    if item.get("pty"):
        port = ConsolePty(item.get("chardev_id", item["console_id"]), ctx.main_loop)
    elif "file_path" in item:
        port = ConsoleFile(item["file_path"], _where(item))
    else:
        port = ConsoleSocket(item["socket_path"], ctx.main_loop, _where(item))
    return ConsoleDevice(item["console_id"], port)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-chardev`` and ``"console"``; 2.x's ``-device virtio-serial-device`` and ``-device
    virtconsole``."""
    registry.add_device_type(DeviceType("console", CHARDEV_OPTION, CONSOLE_SCHEMA,
                                        create_console))
    registry.add_option(VIRTIO_SERIAL_OPTION)
    registry.add_option(VIRTCONSOLE_OPTION)


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
        path = _check_path(item)
        if path is None:
            continue
        if path in owners:
            raise ConfigError(f"{_where(item)}: {path} is already the socket of console"
                              f" {owners[path]!r}")
        owners[path] = item["console_id"]


def _check_path(item: dict[str, Any]) -> str | None:
    """The item's socket path, usable for a socket; or its file path, in an existing
    directory and not a directory itself; or None for a pty; exactly one of the three."""
    if sum(key in item for key in ("socket_path", "file_path", "pty")) != 1:
        raise ConfigError(f"console {item['console_id']!r}: give exactly one of socket_path,"
                          " file_path and pty")
    if "pty" in item:
        return None
    if "socket_path" in item:
        return check_socket_path(item["socket_path"], _where(item))
    path = os.path.abspath(str(item["file_path"]))
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(path)):
        raise ConfigError(f"-chardev file path (console {item['console_id']!r}): {path} is"
                          " a directory, or its directory does not exist")
    return path


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Accepting clients, socket I/O (sendmsg/recvmsg on guest memoryviews), closing
    them, and removing the socket file at exit; setblocking is ioctl FIONBIO; a console
    file is appended to with writev, a pty's master written with writev and read with
    readv."""
    rules.allow("accept4", "sendmsg", "recvmsg", "epoll_ctl", "close", "newfstatat", "unlink",
                "writev", "readv")
    rules.allow_ioctl(termios.FIONBIO)

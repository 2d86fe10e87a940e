"""The hookimpls of the serial plugin: ``-serial stdio`` / ``"serial": {"stdio": true}``, and
StratoVirt 2.x's ``-serial chardev:ID`` naming a ``-chardev stdio``, ``pty``, ``socket`` or
``file`` (the back ends 2.x's serial takes, ``devices/src/legacy/serial.rs``)."""

from __future__ import annotations

import os
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
    ValueKind,
    check_socket_path,
    hookimpl,
)
from stratovmm_serial.chardev import FdChannel, FileSink, PtyChannel, SocketServer
from stratovmm_serial.device import WINDOW, Uart16550
from stratovmm_serial.schema import SERIAL_SCHEMA
from stratovmm_serial.stdio import StdioBackend

STRATOVMM_API = "1.1"

PORT_BASE = 0x3F8   # COM1: what console=ttyS0 probes
IRQ = 4             # COM1's ISA IRQ (the MP table routes it to IOAPIC pin 4)

def serial_from_words(values: Mapping[str, Any]) -> dict[str, Any]:
    """``-serial stdio``, and 2.x's ``-serial pty``, ``-serial socket,path=P,server,nowait``
    and ``-serial file,path=P``: a chardev written in place, which 2.x names
    ``serial_chardev`` (``add_serial``), so that is the pty's label."""
    kind, path = values["backend"], values.get("path")
    if (path is None) == (kind in ("socket", "file")):
        raise ValueError(f"{kind}: path= is needed by socket and file, and only by them")
    if kind != "socket" and (values.get("server") or values.get("nowait")):
        raise ValueError(f"{kind}: server and nowait are a socket's")
    if kind == "socket" and not (values.get("server") and values.get("nowait")):
        raise ValueError("socket: needs both server and nowait (the serial socket listens and"
                         " does not wait for a client)")
    record = {"kind": kind, "path": path, "server": values.get("server"),
              "nowait": values.get("nowait")}
    return serial_from_chardev({"chardev": "serial_chardev"}, record)


SERIAL_OPTION = OptionSpec(
    "serial", "legacy 16550A UART on ttyS0 bound to stdio (or, as in StratoVirt 2.x, a new"
    " pty, a unix socket server or a file)", "serial", implied="backend",
    sub=(SubOption("backend", None, required=True,
                   values={word: word for word in ("stdio", "pty", "socket", "file")},
                   help="stdio, pty, socket or file"),
         SubOption("path", None, ValueKind.PATH, help="the socket's or the file's path"),
         SubOption("server", None, ValueKind.FLAG, help="the socket listens (required)"),
         SubOption("nowait", None, ValueKind.FLAG, help="it does not wait (required)")),
    build=serial_from_words, metavar="stdio|pty|socket,path=SOCKET,server,nowait|file,path=FILE",
)


def serial_from_chardev(values: Mapping[str, Any], chardev: Mapping[str, Any]) -> dict[str, Any]:
    """``-serial chardev:ID`` as the ``serial`` item, on any back end 2.x's serial takes; a
    socket must listen and not wait, as 2.x's chardev requires."""
    ident = values["chardev"]
    kind = chardev["kind"]
    if kind == "stdio":
        return {"stdio": True}
    if kind == "pty":
        return {"pty": True, "chardev_id": ident}
    if kind == "file":
        return {"file_path": chardev["path"]}
    if not (chardev.get("server") and chardev.get("nowait")):
        raise ValueError(f"chardev {ident!r} needs both server and nowait (the serial socket"
                         " listens and does not wait for a client)")
    return {"socket_path": chardev["path"]}


# StratoVirt 2.x's spelling (machine_manager/src/config/chardev.rs, parse_serial): the word
# chardev, a colon and the id of a -chardev.
SERIAL_CHARDEV_OPTION = OptionSpec(
    "serial", "the UART on a -chardev stdio, pty, socket or file (StratoVirt 2.x)", "serial",
    driver="chardev",
    implied="chardev", sub=(SubOption("chardev", None, required=True, help="a -chardev id"),),
    join=Join("chardev", "chardev", serial_from_chardev), metavar="chardev:ID",
)


Backend = StdioBackend | FdChannel | FileSink


def make_backend(ctx: BuildContext, item: dict[str, Any]) -> Backend | None:
    """The far end the item names, opened now (a pty is announced, a socket listens)."""
    if item.get("stdio"):
        return StdioBackend(ctx.main_loop)
    if item.get("pty"):
        return PtyChannel(ctx.main_loop, item.get("chardev_id", "serial"))
    if "socket_path" in item:
        return SocketServer(ctx.main_loop, item["socket_path"])
    if "file_path" in item:
        return FileSink(item["file_path"])
    return None


def create_serial(ctx: BuildContext, item: dict[str, Any]) -> PioWindow:
    """Build the UART for COM1's ports and bind it to its far end (none: output is
    discarded)."""
    irq = ctx.irq_line(IRQ)
    backend = make_backend(ctx, item)
    uart = Uart16550(
        out=backend.write if backend else (lambda _data: None),
        irq=irq.trigger,
        on_rx_space=backend.rx_space_available if backend else None,
        on_close=backend.close if backend else None,
        backend_stats=None if backend is None or isinstance(backend, StdioBackend)
        else backend.stats,
    )
    if backend is not None:
        backend.attach(uart)
    return PioWindow(uart, PORT_BASE, WINDOW)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-serial stdio`` and 2.x's ``-serial chardev:ID``."""
    registry.add_device_type(DeviceType("serial", SERIAL_OPTION, SERIAL_SCHEMA, create_serial))
    registry.add_option(SERIAL_CHARDEV_OPTION)


ENDS = ("stdio", "pty", "socket_path", "file_path")


@hookimpl
def vmm_check_config(config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """One far end at most; ``-daemonize`` closes stdio, so it cannot carry the serial
    console; a socket path must be usable and a file's directory must exist."""
    item = config.get("serial")
    if item is None:
        return
    given = [key for key in ENDS if item.get(key)]
    if len(given) > 1:
        raise ConfigError(f"serial: give one of {', '.join(ENDS)}, not {' and '.join(given)}")
    if runtime.daemonize and item.get("stdio"):
        raise ConfigError("-serial stdio: not allowed with -daemonize (stdio is closed)")
    if "socket_path" in item:
        check_socket_path(item["socket_path"], "-serial chardev: -chardev socket path")
    if "file_path" in item:
        path = os.path.abspath(item["file_path"])
        if os.path.isdir(path) or not os.path.isdir(os.path.dirname(path)):
            raise ConfigError(f"-serial chardev: -chardev file path: {path} is a directory,"
                              " or its directory does not exist")


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """stdin/stdout, pty, socket client and file I/O; accepting a socket client and closing
    the old one; restoring the terminal mode (tcsetattr is an ioctl)."""
    import termios

    rules.allow("read", "write", "accept4", "epoll_ctl", "close", "newfstatat", "unlink")
    rules.allow_ioctl(termios.TCSETS, termios.TCSETSW, termios.TCGETS)

"""``query-chardev``: the character back ends a client must find, which are the ptys.

StratoVirt 2.x answers it with its ``-chardev pty`` list (``machine_manager/src/
machine.rs``, ``query_chardev``): label, ``filename`` ``pty:/dev/pts/N`` and
``frontend-open`` true, the shape of QEMU's ``ChardevInfo``.  A socket or file
chardev has a path the user wrote; a pty's path is chosen at start-up, so this is
how a client (libvirt, a test) learns it without reading stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stratovmm.host.pty import open_ptys
from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import QmpRegistry

CHARDEV_INFO = {"type": "object", "properties": {"label": {"type": "string"},
                                                 "filename": {"type": "string"},
                                                 "frontend-open": {"type": "boolean"}}}


def query_chardev(_vm: VmApi, _args: dict[str, Any]) -> list[dict[str, Any]]:
    """Each open pty as QEMU's ``ChardevInfo``, in the order they were opened."""
    return [{"label": label, "filename": f"pty:{path}", "frontend-open": True}
            for label, path in open_ptys()]


def register_chardev_commands(registry: QmpRegistry) -> None:
    """``query-chardev``."""
    registry.add_command(QmpCommand(
        "query-chardev", query_chardev, returns={"type": "array", "items": CHARDEV_INFO},
        help="the -chardev pty back ends: label and filename pty:/dev/pts/N"))

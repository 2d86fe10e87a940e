"""The core's own QMP commands and events, registered like a plugin's.

``register_core_commands`` fills the same ``QmpRegistry`` the plugins'
``vmm_register_qmp_commands`` hooks fill, before them, so a plugin cannot take
a core name and ``query-commands`` / ``query-qmp-schema`` describe core and
plugin commands alike.  Hot-replace commands (``device_add``/``device_del``
from the core's hotplug code, ``blockdev-add``/``netdev_add`` from plugins) are
registered by their owners the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm import __version__
from stratovmm.qmp.dispatch import current_session
from stratovmm.qmp.errors import GenericError
from stratovmm.qmp.stats import register_stats_commands
from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.context import VmApi
    from stratovmm.registry import QmpRegistry

PACKAGE = f"StratoVMM-{__version__}"

NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "additionalProperties": False}
_FDNAME = {"type": "object", "properties": {"fdname": {"type": "string", "minLength": 1}},
           "required": ["fdname"], "additionalProperties": False}
_VERSION_TRIPLE = {"type": "object", "properties": {k: {"type": "integer"} for k in
                                                   ("major", "minor", "micro")}}

CORE_EVENTS: dict[str, Mapping[str, Any]] = {
    "STOP": NO_ARGUMENTS,
    "RESUME": NO_ARGUMENTS,
    "SHUTDOWN": {"type": "object", "properties": {"guest": {"type": "boolean"},
                                                  "reason": {"type": "string"}},
                 "required": ["guest", "reason"], "additionalProperties": False},
    "DEVICE_DELETED": {"type": "object", "properties": {"device": {"type": "string"},
                                                        "path": {"type": "string"}},
                       "required": ["path"], "additionalProperties": False},
}


def version_triple(version: str = __version__) -> dict[str, int]:
    """``"1.2.3"`` → ``{"major": 1, "minor": 2, "micro": 3}`` (missing parts are 0)."""
    parts = [int(m.group()) for m in (re.match(r"\d+", p) for p in version.split("."))
             if m is not None]
    parts += [0] * (3 - len(parts))
    return {"major": parts[0], "minor": parts[1], "micro": parts[2]}


# -- lifecycle ---------------------------------------------------------------------------


def qmp_capabilities(_vm: VmApi, args: dict[str, Any]) -> None:
    """Accepted for QEMU clients; commands work without it (SPEC §3).  No capability
    (``oob`` ...) is offered, so asking to enable one is an error."""
    for capability in args.get("enable", []):
        raise GenericError(f"Capability '{capability}' not available")


def stop(vm: VmApi, _args: dict[str, Any]) -> None:
    """Pause: vCPUs are kicked out of KVM_RUN and parked; STOP is emitted."""
    vm.pause()


def cont(vm: VmApi, _args: dict[str, Any]) -> None:
    """Resume after ``stop``, or start a ``-freeze`` VM; RESUME is emitted."""
    if vm.state == "shutdown":
        raise GenericError("the VM is shutting down")
    vm.resume()


def quit_vm(vm: VmApi, _args: dict[str, Any]) -> None:
    """End the VM after this reply: SHUTDOWN (``host-qmp-quit``), exit status 0."""
    vm.request_shutdown("host-qmp-quit", "QMP quit")


def query_status(vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """``running``, ``paused``, ``prelaunch`` or ``shutdown``."""
    state = vm.state
    return {"running": state == "running", "singlestep": False, "status": state}


def query_name(vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """The ``-name`` (an empty object when the guest has none, as QEMU answers)."""
    return {} if vm.name is None else {"name": vm.name}


def query_version(_vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """StratoVMM's version in QEMU's ``VersionInfo`` shape, which clients parse."""
    return {"qemu": version_triple(), "package": PACKAGE}


# -- named fds ---------------------------------------------------------------------------


def getfd(vm: VmApi, args: dict[str, Any]) -> None:
    """Name the oldest fd this client passed with SCM_RIGHTS (with this message or
    before it); a fd already under that name is closed."""
    name = args["fdname"]
    if name[0].isdigit():
        raise GenericError("Parameter 'fdname' expects a name not starting with a digit")
    session = current_session()
    fd = session.take_received_fd() if session is not None else None
    if fd is None:
        raise GenericError("No file descriptor supplied via SCM_RIGHTS")
    vm.put_fd(name, fd)    # refuses (and closes fd) past MAX_NAMED_FDS names


def closefd(vm: VmApi, args: dict[str, Any]) -> None:
    """Close a fd named by ``getfd`` that no command has claimed."""
    fd = vm.take_fd(args["fdname"])
    if fd is None:
        raise GenericError(f"File descriptor named '{args['fdname']}' not found")
    os.close(fd)


# -- introspection -------------------------------------------------------------------------


def introspection_handlers(registry: QmpRegistry) -> tuple[QmpCommand, ...]:
    """``query-commands`` and ``query-qmp-schema``: read ``registry`` when called, so
    commands registered after the core's (by plugins) are listed."""

    def query_commands(_vm: VmApi, _args: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": name} for name in sorted(registry.commands)]

    def query_qmp_schema(_vm: VmApi, _args: dict[str, Any]) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for name in sorted(registry.commands):
            command = registry.commands[name]
            entries.append({"name": name, "meta-type": "command", "arg-type": command.schema,
                            "ret-type": command.returns, "allow-oob": False,
                            "help": command.help})
        for name in sorted(registry.events):
            entries.append({"name": name, "meta-type": "event",
                            "arg-type": registry.events[name]})
        return entries

    return (
        QmpCommand("query-commands", query_commands,
                   returns={"type": "array"}, help="names of every registered command"),
        QmpCommand("query-qmp-schema", query_qmp_schema, returns={"type": "array"},
                   help="every command (argument and return JSON schemas) and event"),
    )


def register_core_commands(registry: QmpRegistry) -> None:
    """Register the core's commands and events (before any plugin's)."""
    status = {"type": "object", "properties": {
        "running": {"type": "boolean"}, "singlestep": {"type": "boolean"},
        "status": {"enum": ["prelaunch", "running", "paused", "shutdown"]}}}
    commands = (
        QmpCommand("qmp_capabilities", qmp_capabilities,
                   {"type": "object", "additionalProperties": False,
                    "properties": {"enable": {"type": "array", "items": {"type": "string"}}}},
                   help="capabilities negotiation (accepted, optional)"),
        QmpCommand("stop", stop, help="pause the vCPUs"),
        QmpCommand("cont", cont, help="resume the vCPUs (or start a -freeze VM)"),
        QmpCommand("quit", quit_vm, help="end the VM (SHUTDOWN host-qmp-quit, exit 0)"),
        QmpCommand("query-status", query_status, returns=status, help="the run state"),
        QmpCommand("query-name", query_name,
                   returns={"type": "object", "properties": {"name": {"type": "string"}}},
                   help="the -name of the guest"),
        QmpCommand("query-version", query_version,
                   returns={"type": "object", "properties": {"qemu": _VERSION_TRIPLE,
                                                             "package": {"type": "string"}}},
                   help="StratoVMM's version"),
        QmpCommand("getfd", getfd, _FDNAME, help="name a fd passed with SCM_RIGHTS"),
        QmpCommand("closefd", closefd, _FDNAME, help="close a named fd"),
        *introspection_handlers(registry),
    )
    for command in commands:
        registry.add_command(command)
    for event, schema in CORE_EVENTS.items():
        registry.add_event(event, schema)
    register_stats_commands(registry)

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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm import __version__
from stratovmm.qmp.chardev import register_chardev_commands
from stratovmm.qmp.cpus import register_cpu_commands
from stratovmm.qmp.errors import GenericError
from stratovmm.qmp.stats import register_stats_commands
from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import QmpRegistry

PACKAGE = f"StratoVMM-{__version__}"
# The QEMU version every StratoVirt binary claims in its greeting (v0.3 sends 4.0.1, 2.x
# 5.0.1): QMP clients read "qemu" to decide what the server speaks, and Kata's govmm
# refuses a major below 5.  StratoVMM's own version is in "package".
QEMU_VERSION: Mapping[str, int] = {"micro": 1, "minor": 0, "major": 5}

NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "additionalProperties": False}
_FDNAME = {"type": "object", "properties": {"fdname": {"type": "string", "minLength": 1}},
           "required": ["fdname"], "additionalProperties": False}
_VERSION_TRIPLE = {"type": "object", "properties": {k: {"type": "integer"} for k in
                                                   ("major", "minor", "micro")}}

CORE_EVENTS: dict[str, Mapping[str, Any]] = {
    "STOP": NO_ARGUMENTS,       # data {} (StratoVirt v0.3 sends it)
    "RESUME": NO_ARGUMENTS,
    "SHUTDOWN": {"type": "object", "properties": {"guest": {"type": "boolean"},
                                                  "reason": {"type": "string"}},
                 "required": ["guest", "reason"], "additionalProperties": False},
    "DEVICE_DELETED": {"type": "object", "properties": {"device": {"type": "string"},
                                                        "path": {"type": "string"}},
                       "required": ["path"], "additionalProperties": False},
}


def version_info() -> dict[str, Any]:
    """QEMU's ``VersionInfo``, as the greeting and ``query-version`` both give it."""
    return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}


# -- lifecycle ---------------------------------------------------------------------------


def qmp_capabilities(_vm: VmApi, args: dict[str, Any]) -> None:
    """Accepted for QEMU clients; commands work without it, as in StratoVirt.  No capability
    (``oob`` ...) is offered, so asking to enable one is an error."""
    for capability in args.get("enable", []):
        raise GenericError(f"Capability '{capability}' not available")


def stop(vm: VmApi, _args: dict[str, Any]) -> None:
    """Pause: vCPUs are kicked out of KVM_RUN and parked; STOP is emitted.  Only a running
    VM can be stopped: StratoVirt v0.3 answers any other state with GenericError and no
    event."""
    if vm.state != "running" or not vm.pause():
        raise GenericError(f"stop: the VM is {vm.state}, not running")


def cont(vm: VmApi, _args: dict[str, Any]) -> None:
    """Resume after ``stop``, or start a ``-S``/``-freeze`` VM; RESUME is emitted.  Only a
    paused VM can be continued (v0.3: GenericError, no event, otherwise)."""
    if vm.state != "paused" or not vm.resume():
        raise GenericError(f"cont: the VM is {vm.state}, not paused")


def quit_vm(vm: VmApi, _args: dict[str, Any]) -> None:
    """End the VM after this reply: SHUTDOWN (``host-qmp-quit``), exit status 0."""
    vm.request_shutdown("host-qmp-quit", "QMP quit")


def query_status(vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """``running``, ``paused`` (also a ``-S`` VM not yet continued, as in v0.3) or
    ``shutdown``; ``running`` is true only while running (v0.3 also says true while
    paused, which QEMU's clients would read as running)."""
    state = vm.state
    return {"running": state == "running", "singlestep": False, "status": state}


def query_name(vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """The ``-name`` (an empty object when the guest has none, as QEMU answers)."""
    return {} if vm.name is None else {"name": vm.name}


def query_version(_vm: VmApi, _args: dict[str, Any]) -> dict[str, Any]:
    """The greeting's version: the QEMU version clients compare, StratoVMM's in
    ``package``."""
    return version_info()


# -- named fds ---------------------------------------------------------------------------


def getfd(vm: VmApi, args: dict[str, Any]) -> None:
    """Name the oldest fd this client passed with SCM_RIGHTS (with this message or
    before it); a fd already under that name is closed."""
    from stratovmm.qmp.dispatch import current_session  # loaded: a QMP client called us

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
        "status": {"enum": ["running", "paused", "shutdown"]}}}
    commands = (
        QmpCommand("qmp_capabilities", qmp_capabilities,
                   {"type": "object", "additionalProperties": False,
                    "properties": {"enable": {"type": "array", "items": {"type": "string"}}}},
                   help="capabilities negotiation (accepted, optional)"),
        QmpCommand("stop", stop, help="pause the vCPUs (GenericError unless running)"),
        QmpCommand("cont", cont,
                   help="resume the vCPUs or start a -S VM (GenericError unless paused)"),
        QmpCommand("quit", quit_vm, help="end the VM (SHUTDOWN host-qmp-quit, exit 0)"),
        QmpCommand("query-status", query_status, returns=status, help="the run state"),
        QmpCommand("query-name", query_name,
                   returns={"type": "object", "properties": {"name": {"type": "string"}}},
                   help="the -name of the guest"),
        QmpCommand("query-version", query_version,
                   returns={"type": "object", "properties": {"qemu": _VERSION_TRIPLE,
                                                             "package": {"type": "string"}}},
                   help="the greeting's version (qemu 5.0.1; package StratoVMM-X.Y.Z)"),
        QmpCommand("getfd", getfd, _FDNAME, help="name a fd passed with SCM_RIGHTS"),
        QmpCommand("closefd", closefd, _FDNAME, help="close a named fd"),
        *introspection_handlers(registry),
    )
    for command in commands:
        registry.add_command(command)
    for event, schema in CORE_EVENTS.items():
        registry.add_event(event, schema)
    register_cpu_commands(registry)
    register_stats_commands(registry)
    register_chardev_commands(registry)

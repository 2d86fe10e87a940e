"""QMP ``query-cpus`` and ``query-hotpluggable-cpus`` in StratoVirt v0.3's x86 shapes.

v0.3 (``micro_vm/src/lib.rs``) answers ``query-cpus`` with one entry per online
vCPU: ``arch`` "x86", ``CPU`` (the index), ``current`` true, ``halted`` false
(KVM's in-kernel LAPIC handles HLT, so the VMM never sees a vCPU halt),
``qom_path`` ``/machine/unattached/device[N]``, ``thread_id`` the vCPU thread's
host tid (``gettid``), and ``props`` with its socket, core and thread ids.
``query-hotpluggable-cpus`` lists every possible vCPU as ``host-x86-cpu`` with
``vcpus-count`` 1 and, for present ones, the same ``qom-path``.  Every vCPU is
present and online here (no CPU hotplug), as in v0.3.

The topology is the one our CPUID shows the guest (``stratovmm.boot.cpu``): one
socket whose cores are the vCPUs, one thread per core, so vCPU N is socket 0,
core N, thread 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import QmpRegistry

CPU_TYPE = "host-x86-cpu"

_PROPS: Mapping[str, Any] = {"type": "object", "properties": {
    key: {"type": "integer"} for key in ("node-id", "socket-id", "thread-id", "core-id")}}
_CPU_INFO: Mapping[str, Any] = {"type": "object", "properties": {
    "arch": {"const": "x86"}, "current": {"type": "boolean"},
    "qom_path": {"type": "string"}, "halted": {"type": "boolean"}, "props": _PROPS,
    "CPU": {"type": "integer"}, "thread_id": {"type": "integer"}}}
_HOTPLUGGABLE: Mapping[str, Any] = {"type": "object", "properties": {
    "type": {"type": "string"}, "vcpus-count": {"type": "integer"}, "props": _PROPS,
    "qom-path": {"type": "string"}}}


def qom_path(index: int) -> str:
    """Where QEMU's object model would put vCPU ``index`` (StratoVirt reports the same)."""
    return f"/machine/unattached/device[{index}]"


def cpu_props(index: int) -> dict[str, int]:
    """``CpuInstanceProperties`` of vCPU ``index`` in the one-socket topology."""
    return {"socket-id": 0, "thread-id": 0, "core-id": index}


def query_cpus(vm: VmApi, _args: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``CpuInfo`` per vCPU; ``thread_id`` 0 for a thread not started yet (as v0.3)."""
    return [{"arch": "x86", "current": True, "qom_path": qom_path(index), "halted": False,
             "props": cpu_props(index), "CPU": index, "thread_id": tid or 0}
            for index, tid in enumerate(vm.vcpu_thread_ids())]


def query_hotpluggable_cpus(vm: VmApi, _args: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``HotpluggableCPU`` per vCPU, all present."""
    return [{"type": CPU_TYPE, "vcpus-count": 1, "props": cpu_props(index),
             "qom-path": qom_path(index)} for index in range(vm.vcpu_count)]


def register_cpu_commands(registry: QmpRegistry) -> None:
    """Add the two CPU queries to the core's commands."""
    registry.add_command(QmpCommand(
        "query-cpus", query_cpus, returns={"type": "array", "items": _CPU_INFO},
        help="every vCPU: index, host thread id, topology (StratoVirt v0.3's x86 shape)"))
    registry.add_command(QmpCommand(
        "query-hotpluggable-cpus", query_hotpluggable_cpus,
        returns={"type": "array", "items": _HOTPLUGGABLE},
        help="every possible vCPU (all present: no CPU hotplug)"))

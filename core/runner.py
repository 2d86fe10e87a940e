"""Build the VM from a validated config and run it to the end.

Order matters: a ``-daemonize`` fork must happen before KVM is touched (a KVM
VM belongs to the process that created it), yet set-up errors must still reach
the terminal; the QMP socket must be listening before the process detaches;
the seccomp filter goes on last, once every fd the VM needs is open.
"""

from __future__ import annotations

import logging

from stratovmm.config.model import VmConfig
from stratovmm.machine import MicroVm
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry

log = logging.getLogger(__name__)


def run_vm(config: VmConfig, host: PluginHost, registry: Registry) -> int:
    """Create, boot and run one VM; returns the process exit status."""
    # [daemon] fork here when -daemonize (issue 6)
    vm = MicroVm(config, host, registry)
    vm.build_devices()
    vm.load()
    host.vm_created(vm.api)
    # [qmp] start the QMP server on -api-channel here (issue 4)
    # [daemon] detach / pidfile here (issue 6)
    # [seccomp] apply the filter here (issue 6)
    return vm.run()

"""Build the VM from a validated config and run it to the end."""

from __future__ import annotations

import logging

from stratovmm.config.model import VmConfig
from stratovmm.machine import MicroVm
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry

log = logging.getLogger(__name__)


def run_vm(config: VmConfig, host: PluginHost, registry: Registry) -> int:
    """Create, boot and run one VM; returns the process exit status."""
    vm = MicroVm(config, host, registry)
    vm.build_devices()
    vm.load()
    host.vm_created(vm.api)
    return vm.run()

"""Build the VM from a validated config and run it to the end.

Order matters: a ``-daemonize`` fork must happen before KVM is touched (a KVM
VM belongs to the process that created it), yet set-up errors must still reach
the terminal; the QMP socket must be listening before the process detaches;
the seccomp filter goes on last, once every fd the VM needs is open.
"""

from __future__ import annotations

import logging

from stratovmm.config.model import VmConfig
from stratovmm.devices.ratelimit import TokenBucket
from stratovmm.host import daemon, gcpause, sandbox
from stratovmm.machine import seccomp
from stratovmm.machine.microvm import MicroVm
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry

log = logging.getLogger(__name__)


def run_vm(config: VmConfig, host: PluginHost, registry: Registry) -> int:
    """Create, boot and run one VM; returns the process exit status."""
    runtime = config.runtime
    session = daemon.start(runtime.pidfile, runtime.daemonize)  # -daemonize forks here
    vm = MicroVm(config, host, registry)
    vm.build_devices()
    vm.load()
    host.vm_created(vm.api, config.document, config.runtime)
    if runtime.api_channel is not None:
        # the QMP server's modules only for a VM that serves QMP
        from stratovmm.qmp.dispatch import Dispatcher
        from stratovmm.qmp.server import serve_qmp

        dispatcher = Dispatcher(registry.qmp, vm.api, TokenBucket(runtime.qmp_rate))
        serve_qmp(runtime.api_channel, vm.main_loop, dispatcher, vm.events)
    box = seccomp.prepare(config, host, registry)  # errors reach the terminal
    session.detach()  # pidfile; -daemonize: stdio to /dev/null
    sandbox.apply(box)  # every thread, before any vCPU runs
    session.release()  # -daemonize: the parent exits 0
    gcpause.resume(freeze=True)  # set-up is over: the running VM collects its garbage
    return vm.run()

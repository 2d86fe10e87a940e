"""A test-only plugin implementing every hook of ``stratovmm.hookspecs``: each call writes
``LIFECYCLE <hook> <detail>`` to stderr, so a test can see which hooks the real
``stratovmm`` calls, with what, and in which order.

It registers ``-lifecycle-probe [tag=TEXT]`` (JSON ``"lifecycle_probe"``), which
creates no guest-visible device, and the QMP command ``x-lifecycle-probe``.
Loaded through the ``stratovmm_vm`` fixture (a ``*.dist-info`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from typing import Any

from stratovmm.api import (
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    QmpCommand,
    QmpRegistry,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    VmApi,
    hookimpl,
)

STRATOVMM_API = "1.1"

SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"tag": {"type": "string"}}}
OPTION = OptionSpec("lifecycle-probe", "test probe: logs every hook call", "lifecycle_probe",
                    sub=(SubOption("tag", "tag"),), metavar="[tag=TEXT]")


def say(hook: str, detail: str = "") -> None:
    """One unbuffered line on stderr (a plain write: allowed by the seccomp filter)."""
    os.write(2, f"LIFECYCLE {hook} {detail}\n".encode())


class Probe:
    """The probe's 'device': the guest sees nothing of it; it answers query-stats."""

    id = "probe"

    def stats(self) -> dict[str, int]:
        """No counters of its own."""
        return {"requests": 0}

    def close(self) -> None:
        """The core closes it when the VM ends."""
        say("close", self.id)


def create(ctx: VmApi, item: dict[str, Any]) -> Probe:
    """The probe, which the core records under its id ``probe``."""
    say("create", item.get("tag", ""))
    return Probe()


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """-lifecycle-probe."""
    say("vmm_register_devices")
    registry.add_device_type(DeviceType("lifecycle-probe", OPTION, SCHEMA, create))


@hookimpl
def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
    """x-lifecycle-probe."""
    say("vmm_register_qmp_commands")
    registry.add_command(QmpCommand("x-lifecycle-probe", lambda vm, args: {"state": vm.state}))


@hookimpl
def vmm_check_config(config: dict[str, Any], runtime: Any) -> None:
    """Sees the merged document and the runtime options."""
    say("vmm_check_config", f"tag={config.get('lifecycle_probe', {}).get('tag')}"
                            f" api={runtime.api_channel is not None}")


@hookimpl
def vmm_vm_created(vm: VmApi, config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """The device exists already; the configuration comes along."""
    say("vmm_vm_created", f"probe={vm.device('probe') is not None} state={vm.state}"
                          f" tag={config['lifecycle_probe'].get('tag')}"
                          f" api={runtime.api_channel is not None}")


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules, config: dict[str, Any],
                      runtime: RuntimeOptions) -> None:
    """Nothing beyond the core's list (write() is in it); sees the configuration."""
    say("vmm_seccomp_rules", f"plugin={rules.plugin} tag={config['lifecycle_probe'].get('tag')}"
                             f" api={runtime.api_channel is not None}")


@hookimpl
def vmm_vm_started(vm: Any) -> None:
    """vCPUs run."""
    say("vmm_vm_started", f"state={vm.state}")


@hookimpl
def vmm_vm_paused(vm: Any) -> None:
    """QMP stop."""
    say("vmm_vm_paused", f"state={vm.state}")


@hookimpl
def vmm_vm_resumed(vm: Any) -> None:
    """QMP cont."""
    say("vmm_vm_resumed", f"state={vm.state}")


@hookimpl
def vmm_vm_shutdown(vm: Any, reason: str) -> None:
    """The end."""
    say("vmm_vm_shutdown", f"reason={reason}")

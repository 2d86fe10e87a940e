"""The seccomp rules of this VM: the core's, then those of the plugins it uses.

The filter itself (the core's allow-list, building and loading it, the SIGSYS
reporter) is the host process's business, ``stratovmm.host.sandbox``.  Which
plugins add their ``vmm_seccomp_rules`` depends on the VM: a plugin none of
whose devices is configured adds nothing (its hotplug drivers count as
configured when ``-api-channel`` is given, because QMP can reach them; a plugin
without device types or hotplug drivers always counts), so an unused plugin
never widens the filter.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from stratovmm.config.model import VmConfig
from stratovmm.host import sandbox
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry, SeccompRules

log = logging.getLogger(__name__)


def idle_plugins(registry: Registry, config: VmConfig) -> set[str]:
    """Plugins that made device types or hotplug drivers of which this VM uses none: their
    seccomp rules are left out.  Hotplug drivers are in use when QMP can reach them."""
    devices = registry.devices
    with_devices = {devices.owner[t.option.display] for t in devices.device_types.values()}
    with_devices |= set(devices.hotplug_owner.values())
    in_use = {devices.owner[t.option.display] for t in devices.device_types.values()
              if config.devices(t.option.json_key)}
    if config.runtime.api_channel is not None:
        in_use |= set(devices.hotplug_owner.values())
    return with_devices - in_use


def collect_rules(host: PluginHost, registry: Registry, config: VmConfig,
                  idle: Collection[str] = ()) -> SeccompRules:
    """The core's rules, then those of every plugin (``vmm_seccomp_rules``) not in ``idle``."""
    sandbox.core_rules(registry.seccomp)
    return host.seccomp_rules(registry, config.document, config.runtime, skip=idle)


def prepare(config: VmConfig, host: PluginHost, registry: Registry) -> sandbox.Sandbox | None:
    """Collect the rules of the plugins in use and build the filter (None with
    ``-disable-seccomp``).

    Done before the process detaches, so a plugin's bad rule is a set-up error
    that reaches the terminal.
    """
    if not config.runtime.seccomp:
        log.warning("seccomp filter disabled (-disable-seccomp)")
        return None
    return sandbox.prepare(collect_rules(host, registry, config, idle_plugins(registry, config)))

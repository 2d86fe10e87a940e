"""Every hook a StratoVMM plugin can implement, in lifecycle order.

A plugin is a module listed under the ``stratovmm.devices`` entry point group;
the core loads it with stevedore and registers it with a pluggy
``PluginManager`` for the project name ``stratovmm``.  Mark implementations
with ``stratovmm.api.hookimpl``.  All hooks are called with keyword
arguments; an implementation may accept any subset of them.  They are called
through pluggy, so ``tryfirst``/``trylast`` and wrappers work; the registration
hooks and ``vmm_seccomp_rules`` are called plugin by plugin (in plugin-name
order), each plugin with a registry view of its own.

A plugin module must also define ``STRATOVMM_API = "MAJOR.MINOR"``: the plugin
API version it was written for.  The core refuses a plugin whose major
version differs from ``stratovmm.api.API_VERSION`` or whose minor version is
newer than the core's.

Lifecycle::

    load ─► vmm_register_devices ─► vmm_register_qmp_commands
         ─► (command line + JSON parsed, merged, validated) ─► vmm_check_config
         ─► (devices created through the registered factories)
         ─► vmm_vm_created ─► vmm_seccomp_rules ─► (filter applied)
         ─► vmm_vm_started ─► vmm_vm_paused / vmm_vm_resumed ...
         ─► vmm_vm_shutdown
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from stratovmm.config.model import RuntimeOptions
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import DeviceRegistry, QmpRegistry, SeccompRules

hookspec = pluggy.HookspecMarker("stratovmm")


# -------------------------------------------------------------------------
# registration: what the plugin adds to the VMM
# -------------------------------------------------------------------------


@hookspec
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """Register device types, their options and schema fragments, and hotplug drivers.

    :param registry: this plugin's view of the device registry: call
        ``registry.add_device_type(DeviceType(...))`` for each
        cold-pluggable device (its ``OptionSpec``, strict JSON schema for one item
        and factory), ``registry.add_option(OptionSpec(...))`` for options that
        create no device, and ``registry.add_hotplug_driver(HotplugDriver(...))``
        for each ``device_add`` driver.

    Called once per plugin at start-up, before the command line is parsed (so
    ``--help`` lists the options).  Duplicate names or invalid schemas raise
    ``PluginError`` naming the plugin.
    """


@hookspec
def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
    """Register QMP commands and the events the plugin emits.

    :param registry: this plugin's view of the QMP registry: call
        ``registry.add_command(QmpCommand(name, handler, schema, ...))``; the
        arguments of every request are checked against ``schema`` before
        ``handler(vm, args)`` runs.  ``registry.add_event(name)``
        declares an event for ``query-qmp-schema``.

    Called once per plugin at start-up, right after ``vmm_register_devices``.
    """


# -------------------------------------------------------------------------
# configuration
# -------------------------------------------------------------------------


@hookspec
def vmm_check_config(config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """Check rules the JSON schema cannot express; raise ``ConfigError`` to refuse.

    :param config: the merged configuration (command line over JSON file),
        already validated against the assembled schema, in JSON-file form.
    :param runtime: the options with no file equivalent (``daemonize``, ``name``, ...).

    Called once after parsing, before any device is created.  Raise
    ``stratovmm.api.ConfigError`` with a message naming the option or key.
    """


# -------------------------------------------------------------------------
# VM lifecycle
# -------------------------------------------------------------------------


@hookspec
def vmm_vm_created(vm: VmApi, config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """The VM and all cold-plugged devices exist; no vCPU has run yet.

    :param vm: the running-VM facade (devices, memory, events, loops).
    :param config: the merged configuration, as ``vmm_check_config`` saw it.
    :param runtime: the options with no file equivalent (``api_channel``, ``seccomp``, ...).

    Called on the main thread.  Open here any host resource needed later:
    the seccomp filter is applied right after this hook.
    """


@hookspec
def vmm_seccomp_rules(rules: SeccompRules, config: dict[str, Any],
                      runtime: RuntimeOptions) -> None:
    """Declare the syscalls and ioctls the plugin's devices need after set-up.

    :param rules: this plugin's view of the rules: ``rules.allow("sendmsg", ...)``,
        ``rules.allow("socket", when=[ArgCondition(0, "eq", AF_UNIX)])``,
        ``rules.allow_ioctl(TUNSETOFFLOAD)``.
    :param config: the merged configuration (which devices, which backends).
    :param runtime: the options with no file equivalent (``api_channel``: QMP can
        hot-plug after set-up).

    Called once, after ``vmm_vm_created`` and before the filter is applied to
    every thread (unless ``-disable-seccomp``), and only if the plugin is in
    use: one of its device types is configured, or it has a hotplug driver and
    ``-api-channel`` is given, or it registers neither.  A syscall nobody
    declared kills the process; the core's argument conditions cannot be lifted.
    """


@hookspec
def vmm_vm_started(vm: VmApi) -> None:
    """The vCPUs are running the guest (also after ``-freeze`` + ``cont``).

    :param vm: the running-VM facade.

    Called on the main thread, once.
    """


@hookspec
def vmm_vm_paused(vm: VmApi) -> None:
    """Every vCPU is parked (QMP ``stop``).

    :param vm: the running-VM facade.

    Called on the main thread after the vCPUs are out of the guest.
    """


@hookspec
def vmm_vm_resumed(vm: VmApi) -> None:
    """The vCPUs run again after a pause (QMP ``cont``).

    :param vm: the running-VM facade.

    Called on the main thread.
    """


@hookspec
def vmm_vm_shutdown(vm: VmApi, reason: str) -> None:
    """The VM is ending; release host resources and restore host state (terminal modes).

    :param vm: the running-VM facade.
    :param reason: the QMP ``SHUTDOWN`` reason (``guest-reset``, ``host-qmp-quit``, ...).

    Called on the main thread once the vCPUs have stopped, on every exit path
    that gets that far, plugin by plugin: every implementation runs even if
    another raised (that is logged).  Must not raise.
    """

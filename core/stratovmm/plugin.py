"""Finding plugins (stevedore) and calling them (pluggy), behind one typed facade.

stevedore loads every module listed under the ``stratovmm.devices`` entry point
group; a module that fails to import, or was written for an incompatible
plugin API, stops start-up with its name and the reason (stevedore's default of
logging and skipping is wrong for a VMM).  Each module is registered with a
``pluggy.PluginManager``.  The core never touches ``pm.hook`` directly: it calls
the typed methods of ``PluginHost``, always with keyword arguments.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from stratovmm import hookspecs
from stratovmm.errors import ConfigError, PluginError
from stratovmm.registry import Registry, SeccompRules

if TYPE_CHECKING:
    from stratovmm.config.model import RuntimeOptions
    from stratovmm.machine.vmapi import VmApi

log = logging.getLogger(__name__)

NAMESPACE = "stratovmm.devices"
API_VERSION = "1.1"
hookimpl = pluggy.HookimplMarker("stratovmm")


def check_api_version(name: str, module: types.ModuleType) -> None:
    """Refuse a plugin written for an incompatible plugin API."""
    wanted = getattr(module, "STRATOVMM_API", None)
    if not isinstance(wanted, str):
        raise PluginError(f"plugin {name}: does not declare STRATOVMM_API (the plugin API"
                          f" version it was written for; this core provides {API_VERSION})")
    try:
        major, minor = (int(x) for x in wanted.split("."))
    except ValueError:
        raise PluginError(f"plugin {name}: STRATOVMM_API {wanted!r} is not MAJOR.MINOR") from None
    core_major, core_minor = (int(x) for x in API_VERSION.split("."))
    if major != core_major or minor > core_minor:
        raise PluginError(f"plugin {name}: written for plugin API {wanted}, this core provides"
                          f" {API_VERSION}; install a matching version of the plugin")


def discover() -> dict[str, types.ModuleType]:
    """Load every ``stratovmm.devices`` entry point; any failure is a ``PluginError``."""
    from stevedore import ExtensionManager

    def failed(_manager: Any, entrypoint: Any, exc: BaseException) -> None:
        raise PluginError(f"plugin {entrypoint.name} failed to load: {exc}") from exc

    manager = ExtensionManager(NAMESPACE, invoke_on_load=False,
                               on_load_failure_callback=failed)
    modules: dict[str, types.ModuleType] = {}
    for ext in manager:
        if not isinstance(ext.plugin, types.ModuleType):
            raise PluginError(f"plugin {ext.name}: entry point must name a module")
        modules[ext.name] = ext.plugin
    return modules


class PluginHost:
    """The typed facade over the plugin manager: one method per hook."""

    def __init__(self, modules: dict[str, types.ModuleType]) -> None:
        self.pm = pluggy.PluginManager("stratovmm")
        self.pm.add_hookspecs(hookspecs)
        for name, module in sorted(modules.items()):
            check_api_version(name, module)
            try:
                self.pm.register(module, name=name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                raise PluginError(f"plugin {name}: {exc}") from exc
        try:
            # a hookimpl matching no hookspec (a misspelled hook name) would never be
            # called: the plugin would load and silently do nothing
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            owner = self.pm.get_name(exc.plugin) or "?"
            raise PluginError(f"plugin {owner}: {exc}") from exc
        self.names = sorted(modules)

    @classmethod
    def discover(cls) -> PluginHost:
        """A host over every installed plugin."""
        return cls(discover())

    # -- registration: each plugin in turn, so the registries can name it ------

    def _each(self, hook_name: str, target: Registry, skip: Collection[str] = (),
              **kwargs: Any) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():     # registration order: plugins sorted by name
            if impl.plugin_name in skip:
                continue
            target.set_plugin(impl.plugin_name)
            try:
                impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except (PluginError, ConfigError):
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name}: {hook_name} failed: {exc!r}") from exc
        target.set_plugin("core")

    def register(self, registry: Registry) -> Registry:
        """Run ``vmm_register_devices`` and ``vmm_register_qmp_commands`` into ``registry``."""
        self._each("vmm_register_devices", registry, registry=registry.devices)
        self._each("vmm_register_qmp_commands", registry, registry=registry.qmp)
        return registry

    def seccomp_rules(self, registry: Registry, skip: Collection[str] = ()) -> SeccompRules:
        """Collect the seccomp rules of every plugin not in ``skip`` into ``registry.seccomp``."""
        self._each("vmm_seccomp_rules", registry, skip, rules=registry.seccomp)
        return registry.seccomp

    # -- configuration and lifecycle ---------------------------------------------

    def check_config(self, config: dict[str, Any], runtime: RuntimeOptions) -> None:
        """``vmm_check_config``: plugins may refuse the merged configuration."""
        self.pm.hook.vmm_check_config(config=config, runtime=runtime)

    def vm_created(self, vm: VmApi) -> None:
        """``vmm_vm_created``."""
        self.pm.hook.vmm_vm_created(vm=vm)

    def vm_started(self, vm: VmApi) -> None:
        """``vmm_vm_started``."""
        self.pm.hook.vmm_vm_started(vm=vm)

    def vm_paused(self, vm: VmApi) -> None:
        """``vmm_vm_paused``."""
        self.pm.hook.vmm_vm_paused(vm=vm)

    def vm_resumed(self, vm: VmApi) -> None:
        """``vmm_vm_resumed``."""
        self.pm.hook.vmm_vm_resumed(vm=vm)

    def vm_shutdown(self, vm: VmApi, reason: str) -> None:
        """``vmm_vm_shutdown``: every implementation runs even if one fails."""
        for impl in self.pm.hook.vmm_vm_shutdown.get_hookimpls():
            try:
                args = {"vm": vm, "reason": reason}
                impl.function(**{k: v for k, v in args.items() if k in impl.argnames})
            except Exception:
                log.exception("plugin %s: vmm_vm_shutdown failed", impl.plugin_name)

    def plugins(self) -> Iterable[str]:
        """Names of the loaded plugins."""
        return iter(self.names)

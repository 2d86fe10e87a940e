"""Finding plugins (stevedore) and calling them (pluggy), behind one typed facade.

stevedore loads every module listed under the ``stratovmm.devices`` entry point
group; a module that fails to import, or was written for an incompatible
plugin API, stops start-up with its name and the reason (stevedore's default of
logging and skipping is wrong for a VMM).  While nothing installed has changed,
the group's entries come from a cache (``stratovmm.entrypoints``) and the same
modules are imported without scanning every distribution.  Each module is registered with a
``pluggy.PluginManager``.  The core calls hooks only through the typed methods
of ``PluginHost``, always with keyword arguments, and always through pluggy's
own callers (``pm.hook.NAME``, ``pm.subset_hook_caller``), so ``tryfirst`` /
``trylast``, hook wrappers, ``PluginManager.trace`` and
``add_hookcall_monitoring`` work as pluggy documents them (``PluginHost.pm``).

Hooks that hand each plugin something of its own (a registry view) or that
must run every implementation whatever one of them does are called plugin by
plugin, each through a caller limited to that plugin's implementations, so a
failure is attributed to the plugin that raised it:

- ``vmm_register_devices``, ``vmm_register_qmp_commands``, ``vmm_seccomp_rules``:
  in plugin-name order (the order that decides whose option is listed first and
  whose hot-replace slots come first), each with a registry view bound to its
  name; a plugin that raises stops start-up with ``PluginError`` naming it;
- ``vmm_vm_shutdown``: in the order pluggy would call them (``tryfirst`` first),
  every plugin even if an earlier one raised (logged).

The others (``vmm_check_config``, ``vmm_vm_created``, ``vmm_vm_started``,
``vmm_vm_paused``, ``vmm_vm_resumed``) are one pluggy call over every plugin.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import types
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy

from stratovmm import entrypoints, hookspecs
from stratovmm.errors import ConfigError, PluginError, StratoVmmError
from stratovmm.registry import Registry, SeccompRules

if TYPE_CHECKING:
    from stratovmm.config.model import RuntimeOptions
    from stratovmm.machine.vmapi import VmApi

log = logging.getLogger(__name__)

NAMESPACE = "stratovmm.devices"
# The options a plugin's distribution declares (optional): entry point names such as
# "-drive" or "-device virtio-blk-device", each pointing at the plugin module.
CLAIMS = "stratovmm.options"
API_VERSION = "1.2"
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


def discover(named: Named | None = None,
             core: Collection[str] = ()) -> dict[str, types.ModuleType]:
    """Load the ``stratovmm.devices`` entry points a run needs; any failure is a
    ``PluginError``.

    Without ``named`` (``stratovmm.config.cmdline.named_options``: the options a command
    line names), every plugin.  With it, the plugins whose distribution declares no
    options (``CLAIMS``) and those declaring one the run names; every plugin when the
    run names an option neither ``core`` (the core's own, as ``OptionSpec.display``
    writes them) nor any plugin declares, so that the parser's errors list what is
    installed.  The entry points come from ``stratovmm.entrypoints``' cache while what
    is installed has not changed since it was written (no scan, no
    ``importlib.metadata``); otherwise stevedore scans and loads every plugin, and the
    cache is rewritten."""
    fingerprint = entrypoints.fingerprint()
    cached = entrypoints.load(NAMESPACE, fingerprint)
    if cached is None:
        modules, entries = _scan()
        entrypoints.store(NAMESPACE, fingerprint, entries)
        _claims(fingerprint)  # cached too, while importlib.metadata is loaded anyway
        return modules
    if named is not None:
        cached = _needed(cached, named, core, _claims(fingerprint))
    return _load_entries(cached)


Named = list[tuple[str, tuple[str, ...]]]
"""(option, the words its value may be picked by) for each option a command line names."""


def _claims(fingerprint: list[Any]) -> dict[str, set[str]]:
    """Plugin module -> the options its distribution declares (cached as the devices are;
    listing them imports no plugin)."""
    entries = entrypoints.load(CLAIMS, fingerprint)
    if entries is None:
        from importlib.metadata import entry_points

        entries = [(ep.name, ep.module, ep.attr or "") for ep in entry_points(group=CLAIMS)]
        entrypoints.store(CLAIMS, fingerprint, entries)
    claims: dict[str, set[str]] = {}
    for option, module, _attr in entries:
        claims.setdefault(module, set()).add(option)
    return claims


def _needed(entries: list[entrypoints.Entry], named: Named, core: Collection[str],
            claims: dict[str, set[str]]) -> list[entrypoints.Entry]:
    """The entries a run naming ``named`` needs (see ``discover``)."""
    wanted = {name for name, _words in named} | {
        f"{name} {word}" for name, words in named for word in words}
    known = set(core).union(*claims.values())
    if any(name not in known and not any(f"{name} {w}" in known for w in words)
           for name, words in named):
        return entries
    return [e for e in entries if e[1] not in claims or claims[e[1]] & wanted]


def _scan() -> tuple[dict[str, types.ModuleType], list[entrypoints.Entry]]:
    """stevedore's discovery over a fresh listing: the loaded modules and the entry points
    they came from.

    stevedore's own cache is keyed by 32-bit float modification times (128 s apart at
    today's dates), so a plugin installed within a couple of minutes of the last start
    could stay unseen; our cache found that something changed, so the listing is read
    afresh from ``importlib.metadata`` (deduplicated as stevedore does) and stevedore
    loads it."""
    from stevedore import ExtensionManager

    class FreshManager(ExtensionManager):  # type: ignore[type-arg]
        def list_entry_points(self) -> list[Any]:
            from importlib.metadata import entry_points

            return list({(ep.name, ep.value): ep
                         for ep in entry_points(group=self.namespace)}.values())

    def failed(_manager: Any, entrypoint: Any, exc: BaseException) -> None:
        raise PluginError(f"plugin {entrypoint.name} failed to load: {exc}") from exc

    manager = FreshManager(NAMESPACE, invoke_on_load=False, on_load_failure_callback=failed)
    modules: dict[str, types.ModuleType] = {}
    entries: list[entrypoints.Entry] = []
    for ext in manager:
        modules[ext.name] = _as_module(ext.name, ext.plugin)
        entries.append((ext.name, ext.entry_point.module, ext.entry_point.attr or ""))
    return modules, entries


def _load_entries(entries: list[entrypoints.Entry]) -> dict[str, types.ModuleType]:
    """Import cached entry points as ``EntryPoint.load`` would (module, then attributes)."""
    modules: dict[str, types.ModuleType] = {}
    for name, module_name, attr in entries:
        try:
            plugin: Any = importlib.import_module(module_name)
            for part in filter(None, attr.split(".")):
                plugin = getattr(plugin, part)
        except Exception as exc:
            raise PluginError(f"plugin {name} failed to load: {exc}") from exc
        modules[name] = _as_module(name, plugin)
    return modules


def _as_module(name: str, plugin: Any) -> types.ModuleType:
    if not isinstance(plugin, types.ModuleType):
        raise PluginError(f"plugin {name}: entry point must name a module")
    return plugin


_HOOKABLE = (types.FunctionType, types.MethodType, staticmethod, classmethod)
_MISSING = object()


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, reading a plugin module's attributes from its ``__dict__``.

    ``register`` asks ``parse_hookimpl_opts`` about every name in ``dir(module)``, and
    pluggy answers with ``inspect.getattr_static``, which walks the module type's MRO
    each time: with a few hundred names per plugin (everything imported from
    ``stratovmm.api``) that was ~5 ms of every start.  For a module the answer is in
    its ``__dict__``: a value that is not a function, method, staticmethod or
    classmethod cannot be a hook implementation; a plain function is one exactly when
    it carries the ``stratovmm_impl`` marker; anything else is left to pluggy.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if isinstance(plugin, types.ModuleType):
            value = vars(plugin).get(name, _MISSING)
            if value is not _MISSING and not isinstance(value, _HOOKABLE):
                return None
            if isinstance(value, types.FunctionType):
                opts = getattr(value, self.project_name + "_impl", None)
                return opts if isinstance(opts, dict) else None
        return super().parse_hookimpl_opts(plugin, name)


class PluginHost:
    """The typed facade over the plugin manager: one method per hook."""

    def __init__(self, modules: dict[str, types.ModuleType]) -> None:
        self.pm: pluggy.PluginManager = _PluginManager("stratovmm")
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
    def discover(cls, named: Named | None = None, core: Collection[str] = ()) -> PluginHost:
        """A host over every installed plugin, or those a run naming ``named`` needs
        (``discover``)."""
        return cls(discover(named, core))

    # -- one plugin at a time ------------------------------------------------------------

    def _implementers(self, hook_name: str) -> list[str]:
        """The plugins implementing ``hook_name``, in the order pluggy calls them (it walks
        its implementation list from the end: tryfirst, then the latest registered,
        trylast last); plugins with only a wrapper for it come after."""
        impls = list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))
        plain = [i.plugin_name for i in impls if not (i.hookwrapper or i.wrapper)]
        return list(dict.fromkeys([*plain, *(i.plugin_name for i in impls)]))

    def _caller(self, hook_name: str, plugin: str) -> pluggy.HookCaller:
        """pluggy's caller of ``hook_name`` limited to ``plugin``'s implementations."""
        others = [self.pm.get_plugin(name) for name in self.names if name != plugin]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _each(self, hook_name: str, skip: Collection[str] = ()) -> Iterator[
            tuple[str, pluggy.HookCaller]]:
        """(plugin, its caller) for every plugin implementing ``hook_name``, by name."""
        implementers = set(self._implementers(hook_name))
        for name in self.names:
            if name in implementers and name not in skip:
                yield name, self._caller(hook_name, name)

    @staticmethod
    @contextlib.contextmanager
    def _blaming(plugin: str, hook_name: str) -> Iterator[None]:
        """Let ``PluginError``/``ConfigError`` through; anything else ``plugin``'s
        ``hook_name`` raises becomes a ``PluginError`` naming it."""
        try:
            yield
        except (PluginError, ConfigError):
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin}: {hook_name} failed: {exc!r}") from exc

    # -- registration --------------------------------------------------------------------

    def register(self, registry: Registry, qmp: bool = True) -> Registry:
        """Run ``vmm_register_devices`` (and with ``qmp`` ``vmm_register_qmp_commands``) into
        ``registry``, each plugin with views of it bound to its name."""
        for name, call in self._each("vmm_register_devices"):
            with self._blaming(name, "vmm_register_devices"):
                call(registry=registry.devices.view(name))
        if qmp:
            self.register_qmp(registry)
        return registry

    def register_qmp(self, registry: Registry) -> None:
        """Run ``vmm_register_qmp_commands`` into ``registry.qmp``."""
        for name, call in self._each("vmm_register_qmp_commands"):
            with self._blaming(name, "vmm_register_qmp_commands"):
                call(registry=registry.qmp.view(name))

    def seccomp_rules(self, registry: Registry, config: dict[str, Any], runtime: RuntimeOptions,
                      skip: Collection[str] = ()) -> SeccompRules:
        """Collect the seccomp rules of every plugin not in ``skip`` into ``registry.seccomp``,
        each plugin adding through a view bound to its name."""
        for name, call in self._each("vmm_seccomp_rules", skip):
            with self._blaming(name, "vmm_seccomp_rules"):
                call(rules=registry.seccomp.view(name), config=config, runtime=runtime)
        return registry.seccomp

    # -- configuration and lifecycle ---------------------------------------------

    def _call_all(self, hook_name: str, **kwargs: Any) -> None:
        """One pluggy call of ``hook_name``; an exception that is not the VMM's own
        (``StratoVmmError``: a ``ConfigError`` refusing the configuration, ...) becomes a
        ``PluginError`` naming the plugin it came from."""
        hook = getattr(self.pm.hook, hook_name)
        try:
            hook(**kwargs)
        except StratoVmmError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {self._raised_by(hook, exc)}: {hook_name} failed:"
                              f" {exc!r}") from exc

    @staticmethod
    def _raised_by(hook: pluggy.HookCaller, exc: BaseException) -> str:
        """The plugin whose implementation of ``hook`` raised ``exc``: the deepest of their
        frames on its traceback (pluggy re-raises an implementation's exception as it is;
        a wrapper's frame, when there is one, is nearer the top)."""
        codes = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
        culprit = "?"
        tb = exc.__traceback__
        while tb is not None:
            culprit = codes.get(tb.tb_frame.f_code, culprit)
            tb = tb.tb_next
        return culprit

    def check_config(self, config: dict[str, Any], runtime: RuntimeOptions) -> None:
        """``vmm_check_config``: plugins may refuse the merged configuration."""
        self._call_all("vmm_check_config", config=config, runtime=runtime)

    def vm_created(self, vm: VmApi, config: dict[str, Any], runtime: RuntimeOptions) -> None:
        """``vmm_vm_created``."""
        self._call_all("vmm_vm_created", vm=vm, config=config, runtime=runtime)

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
        """``vmm_vm_shutdown``: every plugin's implementation runs even if one fails (each
        through its own caller, in the order pluggy would call them; failures logged)."""
        for name in self._implementers("vmm_vm_shutdown"):
            try:
                self._caller("vmm_vm_shutdown", name)(vm=vm, reason=reason)
            except Exception:
                log.exception("plugin %s: vmm_vm_shutdown failed", name)

    def plugins(self) -> Iterable[str]:
        """Names of the loaded plugins."""
        return iter(self.names)

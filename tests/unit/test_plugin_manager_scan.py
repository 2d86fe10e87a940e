"""The plugin manager's quick reading of a plugin module's attributes finds exactly the
hook implementations pluggy's own scan finds: on every installed plugin and on a
module with marked and unmarked functions, marked staticmethods and classmethods,
classes, constants and a misspelled hook (which check_pending still refuses)."""

from __future__ import annotations

import types
from typing import Any

import pluggy
import pytest

from stratovmm import hookspecs
from stratovmm.plugin import _PluginManager, discover, hookimpl


def found(manager: pluggy.PluginManager, module: types.ModuleType
          ) -> list[tuple[str, Any, Any]]:
    """(hook name, function, options) of each implementation ``manager`` registered."""
    manager.add_hookspecs(hookspecs)
    manager.register(module, name="probe")
    out = []
    for name, caller in sorted(vars(manager.hook).items()):
        if isinstance(caller, pluggy.HookCaller):
            out += [(name, impl.function, sorted(impl.opts.items()))
                    for impl in caller.get_hookimpls()]
    return out


@pytest.mark.parametrize("name", sorted(discover()))
def test_installed_plugins_register_the_same(name: str) -> None:
    """Each installed plugin's hooks are the same under both scans."""
    module = discover()[name]
    ours = found(_PluginManager("stratovmm"), module)
    assert ours and ours == found(pluggy.PluginManager("stratovmm"), module)


def mixed_module() -> types.ModuleType:
    """A module with every kind of attribute a plugin module may hold."""
    module = types.ModuleType("mixed_plugin")

    @hookimpl
    def vmm_vm_started(vm: Any) -> None:
        """A marked plain function."""

    def vmm_vm_paused(vm: Any) -> None:
        """Not marked: no implementation."""

    @hookimpl(tryfirst=True)
    def shutdown(vm: Any, reason: str) -> None:
        """Marked, registered under the attribute's name."""

    class Holder:
        @staticmethod
        @hookimpl
        def vmm_vm_resumed(vm: Any) -> None:
            """A marked staticmethod, put in the module's dict below."""

    module.vmm_vm_started = vmm_vm_started  # type: ignore[attr-defined]
    module.vmm_vm_paused = vmm_vm_paused  # type: ignore[attr-defined]
    module.vmm_vm_shutdown = shutdown  # type: ignore[attr-defined]
    module.vmm_vm_resumed = vars(Holder)["vmm_vm_resumed"]  # type: ignore[attr-defined]
    module.Holder = Holder  # type: ignore[attr-defined]
    module.CONSTANT = 3  # type: ignore[attr-defined]
    module.os = types  # type: ignore[attr-defined]
    return module


def test_every_kind_of_attribute_is_read_alike() -> None:
    """Functions, a staticmethod, classes and constants: the same implementations."""
    module = mixed_module()
    ours = found(_PluginManager("stratovmm"), module)
    assert ours == found(pluggy.PluginManager("stratovmm"), module)
    assert {name for name, _f, _o in ours} == {"vmm_vm_started", "vmm_vm_shutdown",
                                               "vmm_vm_resumed"}


def test_a_misspelled_hook_is_still_pending() -> None:
    """A marked function matching no hookspec is found, so check_pending refuses it."""
    module = mixed_module()

    @hookimpl
    def vmm_vm_startd(vm: Any) -> None:
        """Misspelled."""

    module.vmm_vm_startd = vmm_vm_startd  # type: ignore[attr-defined]
    manager = _PluginManager("stratovmm")
    manager.add_hookspecs(hookspecs)
    manager.register(module, name="probe")
    with pytest.raises(pluggy.PluginValidationError, match="vmm_vm_startd"):
        manager.check_pending()

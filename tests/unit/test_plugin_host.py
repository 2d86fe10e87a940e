"""PluginHost calls every hook through pluggy's own callers: tryfirst/trylast and hook wrappers
run in the order pluggy documents, ``add_hookcall_monitoring`` and ``enable_tracing`` see
every call, each plugin registers through a view bound to its name, a failing plugin is
named, and every ``vmm_vm_shutdown`` runs even when one fails."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stratovmm import cli, hookspecs
from stratovmm.api import (
    API_VERSION,
    ConfigError,
    DeviceRegistry,
    PluginError,
    QmpCommand,
    QmpRegistry,
    RuntimeOptions,
    SeccompRules,
    hookimpl,
)
from stratovmm.plugin import PluginHost

RUNTIME = RuntimeOptions()


def plugin(**hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module whose hookimpls are ``hooks`` (already marked)."""
    module = types.ModuleType("fake_plugin")
    vars(module).update(STRATOVMM_API=API_VERSION, **hooks)
    return module


def recorder(calls: list[str], label: str, **marker: Any) -> Callable[..., None]:
    """A ``vmm_check_config`` implementation that appends ``label`` (marked with ``marker``)."""
    def vmm_check_config(config: dict[str, Any]) -> None:
        calls.append(label)
    return hookimpl(**marker)(vmm_check_config)


def test_tryfirst_trylast_and_wrappers_run_in_pluggy_order() -> None:
    """Wrappers around everything (old-style hookwrappers and new-style wrappers alike, the
    latest registered outermost), then tryfirst, the plain implementations latest-registered
    first, trylast last: the order pluggy documents, through PluginHost.check_config."""
    calls: list[str] = []

    def new_wrapper(config: dict[str, Any]) -> Iterator[None]:
        calls.append("wrapper before")
        yield
        calls.append("wrapper after")

    def old_wrapper(config: dict[str, Any]) -> Iterator[None]:
        calls.append("hookwrapper before")
        yield
        calls.append("hookwrapper after")

    host = PluginHost({
        "a-first": plugin(vmm_check_config=recorder(calls, "tryfirst", tryfirst=True)),
        "b-plain": plugin(vmm_check_config=recorder(calls, "plain b")),
        "c-last": plugin(vmm_check_config=recorder(calls, "trylast", trylast=True)),
        "d-plain": plugin(vmm_check_config=recorder(calls, "plain d")),
        "e-wrap": plugin(vmm_check_config=hookimpl(wrapper=True)(new_wrapper)),
        "f-oldwrap": plugin(vmm_check_config=hookimpl(hookwrapper=True)(old_wrapper)),
    })
    host.check_config({}, RUNTIME)
    assert calls == ["hookwrapper before", "wrapper before", "tryfirst", "plain d", "plain b",
                     "trylast", "wrapper after", "hookwrapper after"]


class Vm:
    """A stand-in for VmApi: the lifecycle hooks here only pass it on."""

    state = "prelaunch"


def every_hook_once(host: PluginHost) -> None:
    """Drive each PluginHost method the way start-up, QMP and exit do."""
    registry = host.register(cli.core_registry())
    host.check_config({}, RUNTIME)
    vm: Any = Vm()
    host.vm_created(vm, {}, RUNTIME)
    host.seccomp_rules(registry, {}, RUNTIME)
    host.vm_started(vm)
    host.vm_paused(vm)
    host.vm_resumed(vm)
    host.vm_shutdown(vm, "host-qmp-quit")


def every_hook(label: str, calls: list[str]) -> types.ModuleType:
    """A plugin implementing every hookspec (taking none of its arguments: pluggy passes an
    implementation only those it names), each appending ``label:hook``."""
    hooks: dict[str, Callable[..., Any]] = {}
    for name in (n for n in vars(hookspecs) if n.startswith("vmm_")):
        def impl(_name: str = name) -> None:
            calls.append(f"{label}:{_name}")
        hooks[name] = hookimpl(specname=name)(impl)
    return plugin(**hooks)


def test_hookcall_monitoring_sees_every_hook_call() -> None:
    """``pm.add_hookcall_monitoring`` sees a call of every hook; the per-plugin ones
    (registration, seccomp, shutdown) once per plugin, each with only that plugin's
    implementation; and each implementation ran."""
    calls: list[str] = []
    host = PluginHost({"one": every_hook("one", calls), "two": every_hook("two", calls)})
    seen: list[tuple[str, list[str]]] = []
    host.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append((name, [i.plugin_name for i in impls])),
        lambda outcome, name, impls, kwargs: None)
    every_hook_once(host)
    hooks = [n for n in vars(hookspecs) if n.startswith("vmm_")]
    assert {name for name, _impls in seen} == set(hooks)
    per_plugin = ("vmm_register_devices", "vmm_register_qmp_commands", "vmm_seccomp_rules",
                  "vmm_vm_shutdown")
    for name in per_plugin:
        assert sorted(impls for hook, impls in seen if hook == name) == [["one"], ["two"]], name
    for name in set(hooks) - set(per_plugin):
        assert [sorted(impls) for hook, impls in seen if hook == name] == [["one", "two"]], name
    assert sorted(calls) == sorted(f"{p}:{h}" for p in ("one", "two") for h in hooks)


def test_pluggy_tracing_shows_the_hook_calls() -> None:
    """``pm.enable_tracing`` with a writer on ``pm.trace.root`` logs each hook call by name."""
    host = PluginHost({"one": every_hook("one", [])})
    lines: list[str] = []
    host.pm.trace.root.setwriter(lines.append)
    undo = host.pm.enable_tracing()
    every_hook_once(host)
    undo()
    text = "".join(lines)
    for name in (n for n in vars(hookspecs) if n.startswith("vmm_")):
        assert name in text, name


def test_each_plugin_registers_through_a_view_bound_to_its_name() -> None:
    """The registries a plugin's hooks get say its name, and what it registers is owned by
    it; the views share the tables with the core's registry."""
    seen: dict[str, tuple[str, ...]] = {}

    def views(name: str) -> types.ModuleType:
        def vmm_register_devices(registry: DeviceRegistry) -> None:
            seen[name] = (registry.plugin,)

        def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
            seen[name] += (registry.plugin,)
            registry.add_command(QmpCommand(f"x-{name}", lambda vm, args: None))

        def vmm_seccomp_rules(rules: SeccompRules) -> None:
            seen[name] += (rules.plugin,)
            rules.allow(f"{name}call")

        return plugin(vmm_register_devices=hookimpl(vmm_register_devices),
                      vmm_register_qmp_commands=hookimpl(vmm_register_qmp_commands),
                      vmm_seccomp_rules=hookimpl(vmm_seccomp_rules))

    host = PluginHost({"alpha": views("alpha"), "beta": views("beta")})
    registry = host.register(cli.core_registry())
    rules = host.seccomp_rules(registry, {}, RUNTIME)
    assert seen == {"alpha": ("alpha",) * 3, "beta": ("beta",) * 3}
    assert {"x-alpha", "x-beta", "query-status"} <= set(registry.qmp.commands)
    assert rules is registry.seccomp and rules.plugin == "core"
    assert rules.syscalls["alphacall"] == "alpha" and rules.syscalls["betacall"] == "beta"


def test_seccomp_rules_skip_idle_plugins() -> None:
    """Plugins in ``skip`` (none of their devices configured) add no rules."""
    def vmm_seccomp_rules(rules: SeccompRules) -> None:
        rules.allow("idlecall")

    host = PluginHost({"idle": plugin(vmm_seccomp_rules=hookimpl(vmm_seccomp_rules))})
    registry = host.register(cli.core_registry())
    assert "idlecall" not in host.seccomp_rules(registry, {}, RUNTIME, skip={"idle"}).syscalls


def test_a_failing_lifecycle_hook_names_its_plugin() -> None:
    """A plugin whose vmm_vm_created raises stops start-up with PluginError naming it (found
    among several implementations, a wrapper's included); a ConfigError goes through as it
    is."""
    def fails(vm: Any) -> None:
        raise RuntimeError("no such thing")

    def fine(vm: Any) -> None:
        pass

    def wraps(vm: Any) -> Iterator[None]:
        yield

    host = PluginHost({"a": plugin(vmm_vm_created=hookimpl(fine)),
                       "b": plugin(vmm_vm_created=hookimpl(fails)),
                       "c": plugin(vmm_vm_created=hookimpl(wrapper=True)(wraps))})
    with pytest.raises(PluginError, match=r"plugin b: vmm_vm_created failed: .*no such thing"):
        host.vm_created(Vm(), {}, RUNTIME)  # type: ignore[arg-type]

    def refuses(config: dict[str, Any]) -> None:
        raise ConfigError("-thing: no")

    host = PluginHost({"r": plugin(vmm_check_config=hookimpl(refuses))})
    with pytest.raises(ConfigError, match=r"^-thing: no$"):
        host.check_config({}, RUNTIME)


def test_every_shutdown_implementation_runs_even_if_one_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    """vmm_vm_shutdown: the failing plugin is logged by name, and the others still run, in
    pluggy's order (tryfirst first, trylast last)."""
    calls: list[str] = []

    def record(label: str, **marker: Any) -> Callable[..., None]:
        def vmm_vm_shutdown(reason: str) -> None:
            calls.append(label)
            if label == "broken":
                raise OSError("terminal gone")
        return hookimpl(**marker)(vmm_vm_shutdown)

    host = PluginHost({"a": plugin(vmm_vm_shutdown=record("last", trylast=True)),
                       "b": plugin(vmm_vm_shutdown=record("broken")),
                       "c": plugin(vmm_vm_shutdown=record("first", tryfirst=True))})
    host.vm_shutdown(Vm(), "guest-reset")  # type: ignore[arg-type]
    assert calls == ["first", "broken", "last"]
    assert "plugin b: vmm_vm_shutdown failed" in caplog.text

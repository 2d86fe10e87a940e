"""The balloon plugin's option, JSON key, QMP commands and event, without KVM: the real
option parser and schema, the real QMP dispatcher, a small stand-in for the VM."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, cast

import pytest
from stratovmm_balloon import plugin
from stratovmm_balloon.device import PAGE_SIZE, BalloonDevice

from stratovmm.api import ConfigError, EventLoop, EventThrottle
from stratovmm.testing import spec as c
from stratovmm.testing.config import parse_config, plugin_registry, run_main
from stratovmm.testing.dispatch import execute_qmp
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.memory import BytearrayGuestMemory

RAM = 256 << 20


PLUGINS = {"balloon": plugin}


def load(*argv: str) -> dict[str, Any]:
    """The merged JSON document for ``argv`` (a kernel path added)."""
    return parse_config(["-kernel", "k", *argv], PLUGINS).document


class FakeVm:
    """What the plugin uses of ``VmApi``: memory size, the main loop, devices, events."""

    def __init__(self) -> None:
        self.memory = BytearrayGuestMemory(1 << 20)
        self.memory.size = RAM          # the plugin only reads the size
        self.main_loop = EventLoop("fake-main")
        self.devices: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any] | None]] = []
        self.event_interval: float | None = None    # a test's stand-in for 1 s

    def device(self, device_id: str) -> Any | None:
        return self.devices.get(device_id)

    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((name, data))

    def throttled_event(self, name: str, interval: float = 1.0) -> EventThrottle:
        return EventThrottle(name, self.emit_event, self.main_loop,
                             self.event_interval or interval)


def qmp(vm: FakeVm, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request through the real dispatcher (schema check, error classes)."""
    return execute_qmp(PLUGINS, vm, name, arguments)


def balloon_vm(deflate_on_oom: bool = False) -> tuple[FakeVm, BalloonDevice]:
    """A fake VM holding the balloon the plugin's own factory built, under its id."""
    vm = FakeVm()
    device = plugin.create_balloon(cast(Any, vm), {"deflate_on_oom": deflate_on_oom})
    assert device.id == "balloon"
    vm.devices[device.id] = device
    return vm, device


# -- command line and JSON ----------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("deflate-on-oom=on", True), ("deflate-on-oom=off", False),
    ("deflate-on-oom=true", True), ("deflate-on-oom=false", False),
])
def test_option_lands_in_the_json_key(value: str, expected: bool) -> None:
    """-balloon deflate-on-oom=on|off|true|false fills "balloon": {"deflate_on_oom": bool}."""
    assert load("-balloon", value)["balloon"] == {"deflate_on_oom": expected}


def test_json_key_and_command_line_wins(tmp_path: Path) -> None:
    """The "balloon" key of the config file works; the command line overrides it."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "k"},
                                "balloon": {"deflate_on_oom": True}}))
    assert load("-config", str(path))["balloon"] == {"deflate_on_oom": True}
    doc = load("-config", str(path), "-balloon", "deflate-on-oom=off")
    assert doc["balloon"] == {"deflate_on_oom": False}
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "k"}, "balloon": {}}))
    assert load("-config", str(path))["balloon"] == {}


@pytest.mark.parametrize(("argv", "needle"), [
    (["-balloon", "deflate-on-oom=maybe"], "deflate-on-oom"),
    (["-balloon", "size=1"], "size"),
    (["-balloon", "deflate-on-oom=on", "-balloon", "deflate-on-oom=off"], "-balloon"),
])
def test_bad_command_line_is_refused(argv: list[str], needle: str) -> None:
    """A bad boolean, an unknown key or a second -balloon is an error naming it."""
    with pytest.raises(ConfigError, match=needle):
        load(*argv)


@pytest.mark.parametrize("item", [{"deflate_on_oom": "yes"}, {"deflate": True}, [], True])
def test_bad_json_is_refused(tmp_path: Path, item: Any) -> None:
    """A non-boolean deflate_on_oom, an unknown key or a non-object "balloon" is an error."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "k"}, "balloon": item}))
    with pytest.raises(ConfigError, match="balloon"):
        load("-config", str(path))


def test_cli_exits_non_zero_on_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    """stratovmm refuses -balloon deflate-on-oom=2 with a message and exit status 2."""
    rc = run_main(["-kernel", "k", "-balloon", "deflate-on-oom=2"], PLUGINS)
    assert rc == 2 and "deflate-on-oom" in capsys.readouterr().err


def test_factory_passes_deflate_on_oom() -> None:
    """The factory sizes the balloon from the VM's RAM and offers DEFLATE_ON_OOM when asked."""
    _vm, device = balloon_vm(deflate_on_oom=True)
    assert device.ram_pages == RAM // PAGE_SIZE
    assert device.device_features() == 1 << 2
    assert balloon_vm()[1].device_features() == 0


# -- QMP ------------------------------------------------------------------------------------


def test_balloon_sets_the_target_in_pages() -> None:
    """balloon value=V asks for (RAM - V) / 4096 pages on the device loop; V >= RAM empties."""
    vm, device = balloon_vm()
    assert qmp(vm, "balloon", {"value": RAM // 2}) == {"return": {}, "id": 1}
    vm.main_loop.run_once(0)
    assert device.num_pages == RAM // 2 // PAGE_SIZE
    qmp(vm, "balloon", {"value": RAM - 3 * PAGE_SIZE - 100})
    vm.main_loop.run_once(0)
    assert device.num_pages == 3
    qmp(vm, "balloon", {"value": 4 * RAM})
    vm.main_loop.run_once(0)
    assert device.num_pages == 0


@pytest.mark.parametrize("arguments", [
    {"value": 0}, {"value": -4096}, {"value": "128M"}, {"value": 1.5}, {"value": True}, {},
    {"value": 4096, "extra": 1},
])
def test_balloon_refuses_nonsense(arguments: dict[str, Any]) -> None:
    """Zero, negative, non-integer, missing or extra arguments are a GenericError, and the
    target is untouched."""
    vm, device = balloon_vm()
    reply = qmp(vm, "balloon", arguments)
    assert reply["error"]["class"] == "GenericError" and reply["id"] == 1
    vm.main_loop.run_once(0)
    assert device.num_pages == 0


def test_query_balloon_reports_ram_minus_actual() -> None:
    """query-balloon is RAM minus the pages the driver reports (all RAM at first)."""
    vm, device = balloon_vm()
    assert qmp(vm, "query-balloon") == {"return": {"actual": RAM}, "id": 1}
    device.write_config(4, struct.pack("<I", 1000))
    assert qmp(vm, "query-balloon")["return"] == {"actual": RAM - 1000 * PAGE_SIZE}


def test_without_a_balloon_commands_say_not_active() -> None:
    """With no balloon device, balloon and query-balloon answer DeviceNotActive."""
    vm = FakeVm()
    for name, arguments in (("balloon", {"value": RAM}), ("query-balloon", None)):
        reply = qmp(vm, name, arguments)
        assert reply["error"]["class"] == "DeviceNotActive", reply


def test_actual_write_emits_balloon_changed_on_the_main_loop() -> None:
    """A driver write of actual (vCPU thread) becomes BALLOON_CHANGED {actual: BYTES}, sent
    from the main loop; a write that changes nothing sends nothing."""
    vm, device = balloon_vm()
    device.write_config(4, struct.pack("<I", 256))
    device.write_config(4, struct.pack("<I", 256))
    assert vm.events == []
    vm.main_loop.run_once(0)
    assert vm.events == [("BALLOON_CHANGED", {"actual": RAM - 256 * PAGE_SIZE})]


def test_actual_storm_is_coalesced_and_rate_limited() -> None:
    """A driver flipping actual 10,000 times (vCPU writes) makes one BALLOON_CHANGED with
    the latest value on the next main-loop turn, and nothing more within the second (QEMU
    throttles it the same way); the main loop is not flooded with callbacks."""
    vm = FakeVm()
    vm.event_interval = 3600.0      # nothing may leave on the interval's timer meanwhile
    device = plugin.create_balloon(cast(Any, vm), {})
    for i in range(10_000):
        device.write_config(4, struct.pack("<I", 1 + i % 2))
    device.write_config(4, struct.pack("<I", 300))
    vm.main_loop.run_once(0)
    assert vm.events == [("BALLOON_CHANGED", {"actual": RAM - 300 * PAGE_SIZE})]
    for i in range(1000):
        device.write_config(4, struct.pack("<I", 1 + i % 2))
    vm.main_loop.run_once(0)
    vm.main_loop.run_once(0)
    assert len(vm.events) == 1


def test_event_and_commands_are_declared() -> None:
    """balloon, query-balloon and BALLOON_CHANGED appear in the QMP registry."""
    qmp_registry = plugin_registry(PLUGINS).qmp
    assert {"balloon", "query-balloon"} <= set(qmp_registry.commands)
    assert "BALLOON_CHANGED" in qmp_registry.events


def test_target_change_reaches_the_driver_as_config_interrupt() -> None:
    """QMP balloon on a running driver raises a config-change interrupt carrying num_pages."""
    vm, device = balloon_vm()
    harness = DeviceHarness(device, memory_size=1 << 20, loop=vm.main_loop)
    harness.start()
    before = harness.interrupts
    qmp(vm, "balloon", {"value": RAM // 2})
    vm.main_loop.run_once(0)
    assert harness.interrupts == before + 1
    assert harness.read_reg(c.INTERRUPT_STATUS) & c.INT_CONFIG
    assert struct.unpack("<I", harness.read_config(0, 4))[0] == RAM // 2 // PAGE_SIZE

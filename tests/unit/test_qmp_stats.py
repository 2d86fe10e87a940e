"""QMP ``query-stats``: every recorded device's counters in QEMU's StatsResult shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from stratovmm.cli import core_registry
from stratovmm.qmp.errors import DeviceNotFound
from stratovmm.qmp.stats import QUERY_STATS_RETURNS, device_stats, query_stats
from stratovmm.virtio.device import VirtioDevice


class FakeVm:
    """The part of ``VmApi`` query-stats reads: the recorded devices, in creation order."""

    def __init__(self, devices: dict[str, Any]) -> None:
        self._devices = devices

    def devices(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self._devices.items()))


class Uart:
    """A non-virtio device offering the same ``stats()`` method."""

    def stats(self) -> dict[str, int]:
        return {"bytes_written": 5, "bytes_read": 2}


class Broken:
    """A plugin device whose ``stats()`` raises."""

    def stats(self) -> dict[str, int]:
        raise RuntimeError("boom")


def virtio_device(name: str) -> VirtioDevice:
    device = VirtioDevice(name)
    device.counters["requests"] += 3
    device.counters["bytes_read"] += 4096
    device.guest_fault("test", "a bad chain")
    return device


def test_every_device_is_reported_in_creation_order() -> None:
    """Virtio and non-virtio devices both appear, in order, with sorted name/value stats."""
    vm = FakeVm({"d0": virtio_device("d0"), "serial": Uart(), "plain": object()})
    result = query_stats(vm, {})  # type: ignore[arg-type]
    jsonschema.validate(result, QUERY_STATS_RETURNS)
    assert [r["device"] for r in result] == ["d0", "serial", "plain"]
    assert result[0]["qom-path"] == "/machine/peripheral/d0"
    assert result[0]["provider"] == "stratovmm"
    assert result[0]["stats"] == [
        {"name": "bytes_read", "value": 4096}, {"name": "bytes_written", "value": 0},
        {"name": "errors", "value": 0}, {"name": "guest_faults", "value": 1},
        {"name": "requests", "value": 3}]
    assert result[1]["stats"] == [{"name": "bytes_read", "value": 2},
                                  {"name": "bytes_written", "value": 5}]
    assert result[2]["stats"] == []


def test_devices_filter_and_unknown_id() -> None:
    """``devices`` narrows the reply; an unknown id is DeviceNotFound naming it."""
    vm = FakeVm({"d0": virtio_device("d0"), "serial": Uart()})
    assert [r["device"] for r in query_stats(vm, {"devices": ["serial"]})] == [  # type: ignore[arg-type]
        "serial"]
    with pytest.raises(DeviceNotFound, match="Device 'nope' not found"):
        query_stats(vm, {"devices": ["serial", "nope"]})  # type: ignore[arg-type]


def test_a_failing_stats_method_does_not_hide_the_others(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """A device whose stats() raises is reported empty and logged; the rest still report."""
    assert device_stats("bad", Broken()) == []
    assert "device bad: stats() failed" in caplog.text
    vm = FakeVm({"bad": Broken(), "serial": Uart()})
    assert query_stats(vm, {})[1]["stats"] != []  # type: ignore[arg-type]


def test_non_integer_values_are_left_out() -> None:
    """Only integers go on the wire (a bool or text would break the return schema)."""

    class Odd:
        def stats(self) -> dict[str, object]:
            return {"ok": 1, "flag": True, "text": "x"}

    assert device_stats("odd", Odd()) == [{"name": "ok", "value": 1}]


def test_query_stats_is_a_core_command_with_a_strict_schema() -> None:
    """The core registers query-stats; its arguments refuse unknown keys and other targets."""
    command = core_registry().qmp.commands["query-stats"]
    validator = jsonschema.Draft202012Validator(command.schema)
    assert validator.is_valid({"target": "device", "devices": ["d0"]})
    assert validator.is_valid({})
    assert not validator.is_valid({"target": "vm"})
    assert not validator.is_valid({"vcpus": []})

"""device_add's arguments as StratoVirt v0.3 reads them (addr in hexadecimal, lun + 1, the
keys it accepts and ignores), and the named-backend table behind blockdev-add/-del and
netdev_add/_del (names, attach, release on device_del, the cap)."""

from __future__ import annotations

from typing import Any

import pytest

from stratovmm.machine.hotplug import BackendTable, device_add_schema, driver_arguments, slot_of
from stratovmm.qmp.errors import GenericError
from stratovmm.registry import HotplugDriver

DISK_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["driver", "id"],
               "properties": {"driver": {"const": "disk"}, "id": {"type": "string"},
                              "drive": {"type": "string"}, "serial": {"type": "string"}}}
NIC_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["driver", "id"],
              "properties": {"driver": {"const": "nic"}, "id": {"type": "string"},
                             "netdev": {"type": "string"}, "mac": {"type": "string"}}}
DISK = HotplugDriver("disk", 4, DISK_SCHEMA, lambda *_: None, lambda *_: None, lambda *_: None)
NIC = HotplugDriver("nic", 2, NIC_SCHEMA, lambda *_: None, lambda *_: None, lambda *_: None)


@pytest.mark.parametrize(("args", "slot"), [
    ({"addr": "0x1"}, 1), ({"addr": "1"}, 1), ({"addr": "10"}, 16), ({"addr": "0xa"}, 10),
    ({"addr": "0X0B"}, 11), ({"addr": 3}, 3), ({"lun": 0}, 1), ({"lun": 2}, 3),
    ({"addr": "0x2", "lun": 0}, 2), ({}, 0),
])
def test_slot_as_v03_reads_it(args: dict[str, Any], slot: int) -> None:
    """addr is hexadecimal text with an optional 0x (or a JSON integer); without addr,
    lun selects slot lun + 1; with neither, slot 0."""
    assert slot_of(args) == slot


@pytest.mark.parametrize("addr", ["1.0", 1.0, "zz", "", "0x", " 1", "1_0", True, None, [1]])
def test_addr_that_is_not_a_slot_number_is_a_generic_error(addr: Any) -> None:
    """Anything else is GenericError naming addr (v0.3 would quietly use slot 0)."""
    with pytest.raises(GenericError, match=r"device_add: addr .* is not a slot number"):
        slot_of({"addr": addr})


def test_device_add_schema_has_every_v03_argument() -> None:
    """The QMP schema takes v0.3's whole device_add set plus each driver's own keys."""
    schema = device_add_schema([DISK, NIC])
    assert set(schema["properties"]) == {
        "id", "driver", "addr", "lun", "drive", "romfile", "share-rw", "bus", "mac", "netdev",
        "disable-modern", "mq", "vectors", "serial"}
    assert schema["properties"]["driver"] == {"enum": ["disk", "nic"]}


def test_driver_gets_its_own_keys_and_the_rest_is_ignored() -> None:
    """A driver sees only its own keys: v0.3's meaningless ones and another driver's
    (netdev for a disk) are dropped, as v0.3 ignores them; its schema still applies."""
    args = {"driver": "disk", "id": "d", "addr": "0x1", "drive": "n", "netdev": "x",
            "share-rw": "on", "romfile": "", "bus": "virtio-mmio-bus.0", "mq": True}
    assert driver_arguments(DISK, args) == {"driver": "disk", "id": "d", "drive": "n"}
    with pytest.raises(GenericError, match=r"^device_add disk: serial: expected a string, got 5$"):
        driver_arguments(DISK, {"driver": "disk", "id": "d", "serial": 5})


class Backend:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def table(limit: int = 3) -> BackendTable[Backend]:
    return BackendTable("node", "add-cmd", "del-cmd", limit)


def test_names_are_unique_while_they_exist_and_free_after_device_del() -> None:
    """add, attach to a device, device_del (detach) frees the name at once, and the del
    command for it then succeeds once (what QEMU's clients send after device_del)."""
    nodes, device = table(), object()
    first = Backend()
    nodes.add("n1", first)
    with pytest.raises(GenericError, match="add-cmd: node 'n1' already exists"):
        nodes.add("n1", Backend())
    assert nodes.attach("n1", device) is first
    with pytest.raises(GenericError, match="already exists"):
        nodes.check_new("n1")
    with pytest.raises(GenericError, match="del-cmd: node 'n1' is in use by a device"):
        nodes.delete("n1")
    nodes.detach(device)
    nodes.add("n1", Backend())                  # v0.3's suite re-adds after device_del alone
    nodes.delete("n1")                          # unattached: closed
    nodes.detach(device)                        # nothing attached to it any more
    with pytest.raises(GenericError, match="del-cmd: no node 'n1'"):
        nodes.delete("n1")


def test_released_name_is_deleted_once() -> None:
    """After device_del, one del command succeeds; a second says there is no such node."""
    nodes, device = table(), object()
    nodes.attach_cold("root", device)
    nodes.detach(device)
    nodes.delete("root")
    with pytest.raises(GenericError, match="no node 'root'"):
        nodes.delete("root")


def test_cap_counts_attached_and_unattached_and_close_closes_unattached() -> None:
    """At most ``limit`` backends exist; deleting one makes room; close() at the end
    closes what was never attached."""
    nodes = table(limit=3)
    backends = [Backend() for _ in range(3)]
    nodes.attach_cold("cold", object())
    nodes.add("a", backends[0])
    nodes.add("b", backends[1])
    with pytest.raises(GenericError, match=r"add-cmd: too many nodes \(at most 3\); del-cmd"):
        nodes.check_new("c")
    nodes.delete("a")
    assert backends[0].closed
    nodes.add("c", backends[2])
    nodes.close()
    assert backends[1].closed and backends[2].closed and nodes.unattached == {}

"""QMP ``device_add`` / ``device_del``: hot-replace through the virtio-mmio slots.

The core knows no device: ``device_add`` looks the ``driver`` up among the
``HotplugDriver``s plugins registered, checks the arguments against that
driver's schema, and lets the driver fill the slot at ``addr``.  ``device_del``
empties the slot and emits ``DEVICE_DELETED``.  ``BackendTable`` is the
bookkeeping plugins share for the backends their own commands open for
``device_add`` (blk's ``blockdev-add``, net's ``netdev_add``).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from stratovmm.config import schema
from stratovmm.config.core_options import ITEM_ID_SCHEMA
from stratovmm.conforms import conforms
from stratovmm.errors import ConfigError, HotplugError
from stratovmm.qmp.errors import DeviceNotFound, GenericError
from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import HotplugDriver, QmpRegistry

log = logging.getLogger(__name__)

# device_add's arguments in StratoVirt v0.3 (qmp_schema.rs ``device_add``) that every
# driver accepts: ``addr`` and ``lun`` pick the slot; the others mean nothing for a
# virtio-mmio slot and are accepted and ignored, as v0.3 ignores them.
COMMON_PROPERTIES: Mapping[str, Any] = {
    "driver": {"type": "string", "minLength": 1},
    "id": {"type": "string", "minLength": 1, "pattern": ITEM_ID_SCHEMA["pattern"]},
    "addr": {"type": ["string", "integer"],
             "description": "slot: hexadecimal text, 0x optional (\"10\" is 16), or a number"},
    "lun": {"type": "integer", "minimum": 0, "description": "without addr: slot lun+1"},
    "bus": {"type": "string"},
    "romfile": {"type": "string"},
    "share-rw": {"type": ["string", "boolean"]},
    "disable-modern": {"type": ["string", "boolean"]},
    "mq": {"type": ["string", "boolean"]},
    "vectors": {"type": ["string", "integer"]},
}
SLOT_KEYS = frozenset({"addr", "lun"})
DEVICE_DEL_SCHEMA: Mapping[str, Any] = {
    "type": "object", "required": ["id"], "additionalProperties": False,
    "properties": {"id": {"type": "string", "minLength": 1}},
}
_HEX = re.compile(r"(0[xX])?[0-9a-fA-F]+")


def parse_addr(value: Any) -> int:
    """The slot ``addr`` names, read as v0.3 reads it: text is hexadecimal with an optional
    ``0x`` (``"0x1"`` and ``"1"`` are 1, ``"10"`` is 16); a JSON number is taken as it is.
    v0.3 silently uses slot 0 for text it cannot read; that would put a disk where the
    user did not ask, so it is an error here."""
    if type(value) is int:
        return value
    if isinstance(value, str) and _HEX.fullmatch(value):
        return int(value, 16)
    raise GenericError(f"device_add: addr {value!r} is not a slot number (hexadecimal text"
                       " such as \"0x1\", or an integer)")


def slot_of(args: dict[str, Any]) -> int:
    """``addr`` if given, else ``lun`` + 1, else 0 (v0.3's ``device_add``)."""
    if "addr" in args:
        return parse_addr(args["addr"])
    if "lun" in args:
        if type(args["lun"]) is not int:
            raise GenericError(f"device_add: lun {args['lun']!r} is not an integer")
        return args["lun"] + 1
    return 0


def _driver(vm: VmApi, name: str) -> HotplugDriver[Any]:
    drivers = vm.hotplug_drivers()
    if name not in drivers:
        known = ", ".join(sorted(drivers)) or "none"
        raise GenericError(f"device_add: unknown driver {name!r} (hot-pluggable: {known})")
    return drivers[name]


def driver_arguments(driver: HotplugDriver[Any], args: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``driver`` gets: the slot keys and v0.3's meaningless ones are the
    core's, and a key only another driver knows (``netdev`` for a disk) is ignored, as
    v0.3 accepts every key for every driver; what is left must pass the driver's schema."""
    own = driver.schema.get("properties", {})
    ignored = sorted(k for k in args if k not in own and k not in SLOT_KEYS)
    if ignored:
        log.info("device_add %s: ignoring %s", driver.driver, ", ".join(ignored))
    chosen = {k: v for k, v in args.items() if k in own}
    message = None if conforms(driver.schema, chosen) else schema.problem(
        schema.Validator(driver.schema), chosen, schema.under(f"device_add {driver.driver}"))
    if message is not None:
        raise GenericError(message)
    return chosen


def device_add(vm: VmApi, args: dict[str, Any]) -> None:
    """Fill the slot of ``driver`` that ``addr`` (or ``lun``) names with the device ``id``."""
    driver = _driver(vm, args["driver"])
    slot = slot_of(args)
    chosen = driver_arguments(driver, args)
    if vm.device(args["id"]) is not None:
        raise GenericError(f"device_add: id {args['id']!r} is already in use")
    try:
        vm.hotplug_plug(driver, slot, args["id"], chosen)
    except (HotplugError, ConfigError) as exc:
        raise GenericError(f"device_add: {exc}") from None


def device_del(vm: VmApi, args: dict[str, Any]) -> None:
    """Empty the slot of device ``id``, hot- or cold-plugged; emits DEVICE_DELETED."""
    device_id = args["id"]
    try:
        vm.hotplug_unplug(device_id)
    except HotplugError as exc:
        if exc.not_found:
            raise DeviceNotFound(f"device_del: {exc}") from None
        raise GenericError(f"device_del: {exc}") from None
    # v0.3 sends the id as the path too (del_replaceable_device returns it)
    vm.emit_event("DEVICE_DELETED", {"device": device_id, "path": device_id})


def device_add_schema(drivers: Iterable[HotplugDriver[Any]]) -> dict[str, Any]:
    """``device_add``'s arguments: every key some driver accepts (each driver's own
    schema is applied once ``driver`` picked it); the driver names as an enum."""
    drivers = list(drivers)
    properties: dict[str, Any] = dict(COMMON_PROPERTIES)
    for driver in drivers:
        for key, fragment in driver.schema.get("properties", {}).items():
            properties.setdefault(key, fragment)
    properties["driver"] = {"enum": sorted(d.driver for d in drivers)} if drivers else {
        "type": "string", "minLength": 1}
    return {"type": "object", "additionalProperties": False, "required": ["driver", "id"],
            "properties": properties}


def register_hotplug_commands(registry: QmpRegistry, drivers: Iterable[HotplugDriver[Any]]) -> None:
    """Add ``device_add`` and ``device_del`` once the plugins registered their drivers."""
    registry.add_command(QmpCommand("device_add", device_add, device_add_schema(drivers),
                                    help="hot-replace: fill the virtio-mmio slot addr (or lun+1)"))
    registry.add_command(QmpCommand("device_del", device_del, DEVICE_DEL_SCHEMA,
                                    help="hot-replace: empty a slot (hot- or cold-plugged);"
                                         " emits DEVICE_DELETED"))


# -- named backends: blockdev-add's nodes, netdev_add's netdevs -------------------------------


class Closable(Protocol):
    """A host backend: an open image, a tap."""

    def close(self) -> None: ...


B = TypeVar("B", bound=Closable)


class BackendTable(Generic[B]):
    """The backends a plugin opens by name for ``device_add`` (``blockdev-add``'s block
    nodes, ``netdev_add``'s netdevs), and which device each one serves.

    A backend is *unattached* from its add command until ``device_add`` hands it to
    a slot, then *attached* to that device; a cold device's backend is attached
    from the start under the device's id.  ``device_del`` closes the backend and
    frees its name, as StratoVirt v0.3 does (its ``device_del`` drops the config:
    its own tests re-add the same name after ``device_del`` alone); the name is
    remembered as *released*, so that the del command QEMU's clients send after
    ``device_del`` (``blockdev-del``, ``netdev_del``) succeeds.  The del command
    closes an unattached backend and refuses an attached one.

    At most ``limit`` backends exist at once: each holds an open fd, and without a
    cap a client could run the process out of descriptors, and the next failure
    would hit whatever opens a fd next (a guest's ``DRIVER_OK`` on a vCPU thread).
    """

    def __init__(self, noun: str, add_command: str, del_command: str, limit: int) -> None:
        self.noun = noun
        self.add_command = add_command
        self.del_command = del_command
        self.limit = limit
        self.unattached: dict[str, B] = {}
        self.attached: dict[str, Any] = {}                      # name → device
        self.released: OrderedDict[str, None] = OrderedDict()

    def check_new(self, name: str) -> None:
        """Refuse a name in use, or one more backend past the cap (before opening it)."""
        if name in self.unattached or name in self.attached:
            raise GenericError(f"{self.add_command}: {self.noun} {name!r} already exists")
        if len(self.unattached) + len(self.attached) >= self.limit:
            raise GenericError(f"{self.add_command}: too many {self.noun}s (at most"
                               f" {self.limit}); {self.del_command} unused ones first")

    def add(self, name: str, backend: B) -> None:
        """Keep a freshly opened backend, unattached."""
        self.check_new(name)
        self.released.pop(name, None)
        self.unattached[name] = backend

    def attach(self, name: str, device: Any) -> B | None:
        """Hand unattached ``name`` to ``device``; None when there is no such backend."""
        backend = self.unattached.pop(name, None)
        if backend is not None:
            self.attached[name] = device
        return backend

    def attach_cold(self, name: str, device: Any) -> None:
        """A cold-plugged device's backend, named by the device's id."""
        self.attached[name] = device

    def in_use(self, name: str) -> bool:
        """``name`` exists (attached or not)."""
        return name in self.unattached or name in self.attached

    def detach(self, device: Any) -> None:
        """``device_del``: the backend of ``device`` is gone (its owner closes it)."""
        for name, holder in list(self.attached.items()):
            if holder is device:
                del self.attached[name]
                self.released[name] = None
                while len(self.released) > self.limit:
                    self.released.popitem(last=False)

    def delete(self, name: str) -> None:
        """The del command: close an unattached backend; a released name is already gone."""
        backend = self.unattached.pop(name, None)
        if backend is not None:
            backend.close()
            return
        if name in self.attached:
            raise GenericError(f"{self.del_command}: {self.noun} {name!r} is in use by a device"
                               " (device_del it first)")
        if name in self.released:
            del self.released[name]
            return
        raise GenericError(f"{self.del_command}: no {self.noun} {name!r}")

    def close(self) -> None:
        """Close every unattached backend (the VM ends)."""
        for backend in self.unattached.values():
            backend.close()
        self.unattached.clear()

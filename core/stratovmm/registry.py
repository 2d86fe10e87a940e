"""What plugins register into: options, schema fragments, device types, hotplug
drivers, QMP commands and seccomp rules.

The registries check what they are given (names unique, schemas valid and
strict) so a broken plugin fails at start-up with its name, not later in a
guest.  ``Registry`` bundles them.  Each plugin's hookimpl gets a *view*
(``registry.view(plugin)``): the same tables, with every registration made
through it attributed to that plugin, so error messages and the seccomp
owners name the right plugin without any "current plugin" state to set and
reset.
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stratovmm.conforms import surely_valid_schema
from stratovmm.errors import PluginError
from stratovmm.records import record

if TYPE_CHECKING:
    from stratovmm.devices.placement import Built
    from stratovmm.machine.vmapi import BuildContext, VmApi
    from stratovmm.virtio.device import VirtioDevice


class ValueKind(enum.StrEnum):
    """How a sub-option's text becomes a JSON value."""

    STR = "str"        # any text
    PATH = "path"      # non-empty text (a host path)
    INT = "int"        # decimal integer
    BOOL = "bool"      # on|off|true|false (JSON: true/false)
    SIZE = "size"      # bytes, or with K/M/G suffix (JSON: bytes)
    FLAG = "flag"      # the key alone (QEMU's ``server``, ``nowait``) or on|off (JSON: true/false)


@record(frozen=True)
class SubOption:
    """One ``key=value`` of an option, and the JSON field it fills.

    ``field`` None: the key is read and checked but fills no field by itself (a
    QEMU key that means nothing here, such as ``-drive if=none``, or one that the
    option's ``build`` reads).  ``values`` maps fixed words to JSON values (an
    enum); ``parse`` converts text no ``ValueKind`` describes (``-m``'s bare
    numbers, ``fds=3:4``) and raises ``ValueError`` with the reason.
    """

    key: str
    field: str | None
    kind: ValueKind = ValueKind.STR
    required: bool = False
    help: str = ""
    values: Mapping[str, Any] | None = None   # text → JSON value (e.g. microvm → "MicroVm")
    parse: Callable[[str], Any] | None = None


@record(frozen=True)
class Join:
    """How a front end (``-device virtio-blk-device,drive=d0``) finds the back end it names.

    ``key`` is the front end's sub-option that holds the back end's id (``drive``,
    ``netdev``, ``chardev``, ``rng``).  ``backend`` is where that id is looked up:
    the ``json_key`` of back-end options (``OptionSpec.backend``: ``-chardev
    socket,...``, ``-object rng-random,...``, held aside by id), or the JSON key of
    a repeatable item option (``drive``, ``net``: the item the back end made).
    ``build(values, record)`` makes the item from the front end's values (by key)
    and the back end's record (by field, with ``kind``: the back end's leading
    word); without it the item is the record with the front end's fields laid
    over it.  A back-end record serves one front end; an item the front end was
    built from is replaced where it stood (so ``-drive`` order still names the
    disks), an item built from a held back end is added.  ``needs`` names a
    back-end table that must hold at least one record (``virtconsole`` is a port
    of a ``-device virtio-serial-device``).  Every error names the front end.
    """

    key: str
    backend: str
    build: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    needs: str | None = None


@record(frozen=True)
class OptionSpec:
    """A command-line option and where its value lands in the JSON config.

    Forms, by ``style``:
      ``keyvalue``  ``-drive id=a,file=b``: sub-options, ``implied`` names the key a
                    leading bare value belongs to (``-smp 2`` = ``-smp cpus=2``)
      ``value``     ``-kernel PATH``: the whole text is ``sub[0]``'s value
      ``words``     ``-append a b c``: every word up to the next option
      ``flag``      ``-freeze``: no value (JSON: true)
      ``optional``  ``-D [PATH]``: a value only if the next word is not an option
    With ``driver`` set the option begins with that word: ``-device DRIVER,k=v,...``,
    ``-object TYPE,...``, ``-netdev tap,...``, ``-chardev socket,...`` (QEMU's and
    StratoVirt 2.x's spellings); several options may share a name, each with its
    own word, beside at most one without (``-netdev id=...``, v0.3's form), which
    takes every value not starting with a known word.  ``-serial chardev:ID`` is
    the word ``chardev`` with the ``implied`` key's value after a colon.
    ``json_key`` is the top-level JSON key; with ``repeatable`` its value is a list of
    objects (merged with the file's by ``id_field``), otherwise one object merged
    key by key.  ``file_key`` False keeps the option out of the JSON file (runtime only).
    With ``nest`` the sub-options fill an object at ``json_key.nest`` instead
    (``-cpu host,kvm-pv-ipi=off`` → ``"machine-config": {"cpu": {...}}``).
    Several options may write one JSON key (a second spelling of a device:
    ``-device virtio-rng-device`` beside ``-rng``) when they agree on
    ``repeatable`` and ``id_field``.

    ``build(values)`` makes the JSON fragment from the values given (by key) when
    keys do not map one to one onto fields, and checks rules between keys
    (raising ``ValueError`` with the reason).  ``backend`` True makes the option
    a back end (``-chardev socket,id=c0,...``): its record is held under
    ``json_key`` by its ``id_field`` until a front end's ``join`` names it, and
    never becomes a JSON item by itself.  ``join`` makes the option a front end
    (see ``Join``).
    """

    name: str
    help: str
    json_key: str
    sub: tuple[SubOption, ...] = ()
    style: str = "keyvalue"
    implied: str | None = None
    repeatable: bool = False
    id_field: str | None = None
    driver: str | None = None
    file_key: bool = True
    metavar: str = ""
    nest: str | None = None
    build: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    backend: bool = False
    join: Join | None = None

    @property
    def display(self) -> str:
        """How the option is written on the command line (``-drive``, ``-device vsock``)."""
        return f"-{self.name} {self.driver}" if self.driver else f"-{self.name}"

    def subkey(self, key: str) -> SubOption | None:
        """The sub-option named ``key``."""
        return next((s for s in self.sub if s.key == key), None)


@record(frozen=True)
class DeviceType:
    """A cold-pluggable device kind: its option, its schema, and the factory.

    ``schema`` describes one JSON item (an object with ``additionalProperties:
    false``); for a repeatable option the file holds a list of them.
    ``create(ctx, item)`` builds one device from a validated item and returns it
    (``stratovmm.devices.placement``: the device, or the device and its window);
    the core attaches it, records it under its id and closes it at exit.
    """

    name: str
    option: OptionSpec
    schema: Mapping[str, Any]
    create: Callable[[BuildContext, dict[str, Any]], Built]


D = TypeVar("D", bound="VirtioDevice")


@record(frozen=True)
class HotplugDriver(Generic[D]):
    """A ``device_add`` driver (e.g. ``virtio-blk-mmio``) and the slots it reserves at boot,
    typed over its device class ``D``.

    Hot-replace works as in StratoVirt: at boot each reserved virtio-mmio slot
    holds ``placeholder(vm, index)``, an empty device of the driver's kind that
    the guest probes like any other.  ``device_add`` calls ``plug(vm, device,
    args)`` to give that device a backend (args already checked against
    ``schema``); ``device_del`` calls ``unplug(vm, device)`` to take it away.
    Both run on the main loop and tell the guest through a config-change
    interrupt; the core records and forgets the device under the ``device_add``
    id.  ``takes_cold(device)`` says whether a cold-plugged device belongs
    in this driver's slots (it is then one of ``D``): StratoVirt fills its blk and
    net slots with the ``-drive`` and ``-netdev`` devices in order, and ``device_del``
    can remove them; None (the default) keeps every cold device out of the slots.
    """

    driver: str
    slots: int
    schema: Mapping[str, Any]
    placeholder: Callable[[VmApi, int], D]
    plug: Callable[[VmApi, D, dict[str, Any]], None]
    unplug: Callable[[VmApi, D], None]
    takes_cold: Callable[[VirtioDevice], bool] | None = None


@record(frozen=True)
class QmpCommand:
    """A QMP command: its argument schema (an object schema) and its handler.

    ``handler(vm, args)`` returns the ``return`` value (``None`` → ``{}``) or raises
    a ``stratovmm.api.QmpError`` (``GenericError``, ``DeviceNotFound``, ...).
    """

    name: str
    handler: Callable[[VmApi, dict[str, Any]], Any]
    schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "additionalProperties": False}
    )
    returns: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    help: str = ""


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_strict_schema(schema: Mapping[str, Any], where: str) -> None:
    """A fragment must be a valid JSON schema for an object that refuses unknown keys
    (jsonschema is asked only when the quick walk cannot vouch for it)."""
    if not surely_valid_schema(schema):
        _check_meta_schema(schema, where)
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        raise PluginError(f"{where}: schema must be an object with additionalProperties false")


def _check_meta_schema(schema: Mapping[str, Any], where: str) -> None:
    import jsonschema

    try:
        # Draft 7 meta-schema: checks the same keywords our fragments use, and costs a
        # fraction of 2020-12's $dynamicRef walk (start-up time is a feature)
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PluginError(f"{where}: invalid JSON schema: {exc.message}") from exc


class DeviceRegistry:
    """Device types (with their options) and hotplug drivers, registered as ``plugin``."""

    def __init__(self, plugin: str = "core") -> None:
        self.plugin = plugin
        self.device_types: dict[str, DeviceType] = {}
        self.options: dict[tuple[str, str | None], OptionSpec] = {}
        self.hotplug_drivers: dict[str, HotplugDriver[Any]] = {}
        self.owner: dict[str, str] = {}
        self.hotplug_owner: dict[str, str] = {}

    def view(self, plugin: str) -> DeviceRegistry:
        """The same tables, registering as ``plugin`` (what that plugin's hook is given)."""
        return _view(self, plugin)

    def add_option(self, option: OptionSpec) -> None:
        """An option that is not a device type's own: a core option, a plugin's runtime
        switch, a second spelling of a device (``-device virtio-rng-device`` beside
        ``-rng``), a back end or a front end."""
        key = (option.name, option.driver)
        if key in self.options:
            raise PluginError(
                f"plugin {self.plugin}: option {option.display} is already registered"
                f" by {self.owner.get(option.display, '?')}"
            )
        if not _NAME.fullmatch(option.name):
            raise PluginError(f"plugin {self.plugin}: bad option name {option.name!r}")
        self._check_json_key(option)
        self.options[key] = option
        self.owner[option.display] = self.plugin

    def _check_json_key(self, option: OptionSpec) -> None:
        """Options sharing a JSON key (or a back-end table) are one plugin's and agree on
        what an item is; a back end is held by id and never shares a key with items."""
        where = f"plugin {self.plugin}: option {option.display}"
        if option.backend and option.id_field is None:
            raise PluginError(f"{where}: a back end needs an id_field")
        for other in self.options.values():
            if other.json_key != option.json_key or not (other.file_key or other.backend):
                continue
            if not (option.file_key or option.backend):
                continue
            owner = self.owner.get(other.display, "?")
            if owner != self.plugin:
                raise PluginError(f"{where}: JSON key {option.json_key!r} belongs to {owner}")
            if (other.backend, other.repeatable, other.id_field) != (
                    option.backend, option.repeatable, option.id_field):
                raise PluginError(f"{where}: writes {option.json_key!r} like {other.display}"
                                  " but disagrees on backend, repeatable or id_field")

    def add_device_type(self, device_type: DeviceType) -> None:
        """A cold-pluggable device: option + schema + factory."""
        where = f"plugin {self.plugin}: device {device_type.name}"
        if device_type.name in self.device_types:
            raise PluginError(f"{where}: already registered")
        check_strict_schema(device_type.schema, where)
        if any(o.json_key == device_type.option.json_key for o in self.options.values()):
            raise PluginError(f"{where}: JSON key {device_type.option.json_key!r} already taken")
        self.add_option(device_type.option)
        self.device_types[device_type.name] = device_type

    def add_hotplug_driver(self, driver: HotplugDriver[Any]) -> None:
        """A ``device_add`` driver name and its reserved slots."""
        where = f"plugin {self.plugin}: hotplug driver {driver.driver}"
        if driver.driver in self.hotplug_drivers:
            raise PluginError(f"{where}: already registered")
        if not 0 <= driver.slots <= 16:
            raise PluginError(f"{where}: slots must be 0..16")
        check_strict_schema(driver.schema, where)
        self.hotplug_drivers[driver.driver] = driver
        self.hotplug_owner[driver.driver] = self.plugin


class QmpRegistry:
    """QMP commands and event names, registered as ``plugin``."""

    def __init__(self, plugin: str = "core") -> None:
        self.plugin = plugin
        self.commands: dict[str, QmpCommand] = {}
        self.events: dict[str, Mapping[str, Any]] = {}

    def view(self, plugin: str) -> QmpRegistry:
        """The same tables, registering as ``plugin``."""
        return _view(self, plugin)

    def add_command(self, command: QmpCommand) -> None:
        """Register a command; its argument schema must be strict."""
        where = f"plugin {self.plugin}: QMP command {command.name}"
        if command.name in self.commands:
            raise PluginError(f"{where}: already registered")
        check_strict_schema(command.schema, where)
        self.commands[command.name] = command

    def add_event(self, name: str, data_schema: Mapping[str, Any] | None = None) -> None:
        """Declare an event the plugin emits (listed by query-qmp-schema)."""
        if name in self.events:
            raise PluginError(f"plugin {self.plugin}: QMP event {name} already declared")
        self.events[name] = data_schema or {"type": "object"}


@record(frozen=True)
class ArgCondition:
    """A check on one argument of a system call, for ``SeccompRules.allow(..., when=[...])``.

    ``arg`` is the argument's index (0-5).  ``op`` is ``"eq"`` (the argument
    equals ``value``), ``"lt"``/``"le"`` (is below / at most ``value``) or
    ``"masked_eq"`` (``argument & mask == value``: "these flag bits are clear"
    is ``masked_eq`` with ``value`` 0).  The filter compares the 64-bit register
    while the kernel reads an ``int`` argument from its low 32 bits, which is
    why there is no "not equal" or "greater than": garbage in the high bits
    would satisfy them and still reach the kernel as the forbidden value.  The
    filter sees only the value: what a pointer points to (a path, a socket
    address) cannot be checked.
    """

    arg: int
    op: str
    value: int
    mask: int = 0


_ARG_OPS = ("eq", "lt", "le", "masked_eq")


class SeccompRules:
    """Syscalls (by name) and ioctl request numbers a plugin needs after set-up.

    Rules combine: a call is allowed when any rule for it holds, and a rule
    only ever allows more.  The core allows a few calls only under conditions
    (threads-only ``clone``, read-only ``openat``...: ``stratovmm.host.sandbox``); a
    plugin cannot lift those: its ``allow(name)`` of such a call means the
    core's rule (it already covers what a device's own thread, signal or
    read-only open needs), and a plugin that needs more adds a narrow rule with
    ``when``.
    """

    def __init__(self, plugin: str = "core") -> None:
        self.plugin = plugin
        self.syscalls: dict[str, str] = {}
        self.owners: dict[str, set[str]] = {}
        self.ioctls: dict[int, str] = {}
        self.rules: dict[str, list[tuple[str, tuple[ArgCondition, ...]]]] = {}

    def view(self, plugin: str) -> SeccompRules:
        """The same rules, adding as ``plugin``."""
        return _view(self, plugin)

    def copy(self) -> SeccompRules:
        """Separate rules with the same content (changing one leaves the other as it was)."""
        other = SeccompRules(self.plugin)
        other.syscalls = dict(self.syscalls)
        other.owners = {name: set(owners) for name, owners in self.owners.items()}
        other.ioctls = dict(self.ioctls)
        other.rules = {name: list(entries) for name, entries in self.rules.items()}
        return other

    def allow(self, *syscalls: str, when: Sequence[ArgCondition] = ()) -> None:
        """Allow these syscalls; with ``when``, only while every condition holds.

        Without ``when`` any arguments pass, except for a call the core allows
        only under a condition: that condition stays.
        """
        conditions = tuple(when)
        for condition in conditions:
            self._check(condition)
        if len({c.arg for c in conditions}) < len(conditions):
            raise PluginError(f"plugin {self.plugin}: seccomp rule for"
                              f" {', '.join(syscalls)} checks one argument twice (libseccomp"
                              " takes one condition per argument; add two rules instead)")
        if conditions and "ioctl" in syscalls:
            raise PluginError(f"plugin {self.plugin}: ioctl is limited by request"
                              " number: use allow_ioctl")
        for name in syscalls:
            self.syscalls.setdefault(name, self.plugin)
            self.owners.setdefault(name, set()).add(self.plugin)
            rule = (self.plugin, conditions)
            if rule not in self.rules.setdefault(name, []):
                self.rules[name].append(rule)

    def _check(self, condition: ArgCondition) -> None:
        where = f"plugin {self.plugin}: seccomp condition {condition}"
        if not 0 <= condition.arg <= 5:
            raise PluginError(f"{where}: arg must be 0..5")
        if condition.op not in _ARG_OPS:
            raise PluginError(f"{where}: op must be one of {', '.join(_ARG_OPS)}")
        if not all(-(1 << 63) <= v < 1 << 64 for v in (condition.value, condition.mask)):
            raise PluginError(f"{where}: value and mask must fit 64 bits")
        if condition.op == "masked_eq" and condition.value & ~condition.mask:
            raise PluginError(f"{where}: value has bits outside the mask (never true)")

    def allow_ioctl(self, *requests: int) -> None:
        """Allow ioctl with these request numbers (the filter checks argument 1)."""
        for request in requests:
            self.ioctls.setdefault(request, self.plugin)

    def core_conditioned(self, name: str) -> bool:
        """True when the core allows ``name`` only under conditions."""
        core = [c for owner, c in self.rules.get(name, []) if owner == "core"]
        return bool(core) and all(core)

    def conditions(self, name: str) -> list[tuple[ArgCondition, ...]] | None:
        """What the filter allows for ``name``: ``None`` for any arguments, else the
        alternatives (each a set of conditions that must all hold)."""
        rules = self.rules.get(name, [])
        if not self.core_conditioned(name) and any(not c for _owner, c in rules):
            return None
        return list(dict.fromkeys(c for _owner, c in rules if c))

    def held_to_core(self, name: str) -> list[str]:
        """Plugins that allowed ``name`` without conditions while the core conditions it
        (their rule is the core's)."""
        if not self.core_conditioned(name):
            return []
        return sorted({owner for owner, c in self.rules.get(name, []) if owner != "core"
                       and not c})


@record
class Registry:
    """Everything the plugins registered, as the core reads it."""

    devices: DeviceRegistry = field(default_factory=DeviceRegistry)
    qmp: QmpRegistry = field(default_factory=QmpRegistry)
    seccomp: SeccompRules = field(default_factory=SeccompRules)


_Table = TypeVar("_Table", DeviceRegistry, QmpRegistry, SeccompRules)


def _view(table: _Table, plugin: str) -> _Table:
    """A shallow copy of ``table`` (its dicts are shared, never rebound) owned by ``plugin``."""
    view = copy.copy(table)
    view.plugin = plugin
    return view

"""StratoVirt 2.x's front ends joined to their back ends, once the whole command line is read.

2.x splits a device in two: a back end (``-drive id=d0,file=...``, ``-netdev
tap,id=n0,...``, ``-chardev socket,id=c0,...``, ``-object rng-random,id=r0,...``)
and a front end that names it (``-device virtio-blk-device,drive=d0,id=blk0``).
A back end serves one front end (2.x removes it from its table when a device
takes it: "not found or is in use").  The result is the item the v0.3 form
would have written, so validation, seccomp, the factories and the hot-replace
slots see one kind of configuration:

- ``-drive`` and ``-netdev tap`` make an item on their own (a ``-drive`` no
  ``-device`` names is still a disk, as v0.3's ``-drive`` is); the front end
  replaces that item with the joined one;
- held back ends (``OptionSpec.backend``) make nothing by themselves; the
  front end adds the joined item.

Items of a repeatable key are then put in the order their devices were asked
for: an item a front end joined takes the front end's place on the line, as 2.x
creates devices in ``-device`` order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stratovmm.errors import ConfigError, PluginError
from stratovmm.registry import OptionSpec

if TYPE_CHECKING:
    from stratovmm.config.cmdline import CommandLineParser, FrontEnd, ParsedCommandLine


class _Joiner:
    """One pass over the front ends of a parsed command line."""

    def __init__(self, out: ParsedCommandLine, options: Sequence[OptionSpec],
                 parser: CommandLineParser) -> None:
        self.out = out
        self.parser = parser
        self.tables: dict[str, list[OptionSpec]] = {}
        for option in options:
            if option.backend:
                self.tables.setdefault(option.json_key, []).append(option)
        items = [o for o in options if o.file_key and o.repeatable and o.join is None]
        self.item_ids = {o.json_key: o.id_field for o in items}
        self.item_names = {o.json_key: o.name for o in items}
        self.used: dict[tuple[str, str], str] = {}

    def table_name(self, table: str) -> str:
        """How the user wrote the back ends of ``table`` (``-chardev``, ``-object rng-random``)."""
        options = self.tables[table]
        return options[0].display if len(options) == 1 else f"-{options[0].name}"

    def join(self, front: FrontEnd) -> None:
        """Find the back end ``front`` names and store the item they make."""
        spec = front.spec
        join = spec.join
        assert join is not None
        if join.needs is not None and not self.out.backends.get(join.needs):
            raise ConfigError(f"{spec.display}: needs a {self.table_name(join.needs)}"
                              " on the command line too")
        ident = front.values.get(join.key)
        if ident is None:
            raise ConfigError(f"{spec.display}: missing {join.key}=")
        if join.backend in self.tables:
            self._from_table(front, join.backend, str(ident))
        elif join.backend in self.item_ids:
            if spec.json_key != join.backend:
                raise PluginError(f"option {spec.display}: joins {join.backend!r} items but"
                                  f" writes {spec.json_key!r} (it must replace the item)")
            self._from_item(front, join.backend, str(ident))
        else:
            raise ConfigError(f"{spec.display}: its {join.key}= back ends come from a plugin"
                              " that is not installed")

    def _claim(self, front: FrontEnd, table: str, ident: str, name: str) -> None:
        user = self.used.get((table, ident))
        if user is not None:
            raise ConfigError(f"{front.spec.display}: {name} {ident!r} is already used by"
                              f" {user} (a back end serves one device)")
        self.used[(table, ident)] = front.spec.display

    def _build(self, front: FrontEnd, record: Mapping[str, Any]) -> dict[str, Any]:
        spec = front.spec
        assert spec.join is not None
        if spec.join.build is None:
            return {**{k: v for k, v in record.items() if k != "kind"}, **front.fragment}
        try:
            return spec.join.build(front.values, record)
        except ValueError as exc:
            raise ConfigError(f"{spec.display}: {exc}") from None

    def _from_table(self, front: FrontEnd, table: str, ident: str) -> None:
        name = self.table_name(table)
        record = self.out.backends.get(table, {}).get(ident)
        if record is None:
            raise ConfigError(f"{front.spec.display}: no {name} with id {ident!r}")
        self._claim(front, table, ident, name)
        self.parser.store(self.out, front.spec, self._build(front, record), front.seq,
                          tuple(front.values))

    def _from_item(self, front: FrontEnd, key: str, ident: str) -> None:
        spec = front.spec
        name = f"-{self.item_names[key]}"
        self._claim(front, key, ident, name)
        items: list[dict[str, Any]] = self.out.document.get(key, [])
        id_field = str(self.item_ids[key])
        index = next((n for n, item in enumerate(items) if item.get(id_field) == ident), None)
        if index is None:
            raise ConfigError(f"{spec.display}: no {name} with id {ident!r}")
        item = self._build(front, items[index])
        new_id = item.get(id_field)
        if any(n != index and other.get(id_field) == new_id for n, other in enumerate(items)):
            raise ConfigError(f"{spec.display}: duplicate id {new_id!r}")
        items[index] = item
        self.out.order[key][index] = front.seq


def _reorder(out: ParsedCommandLine) -> None:
    """Items of each repeatable key in the order their devices were asked for."""
    for key, seqs in out.order.items():
        items = out.document.get(key, [])
        ranked = sorted(zip(seqs, range(len(items)), items, strict=True),
                        key=lambda entry: (entry[0], entry[1]))
        out.document[key] = [item for _seq, _n, item in ranked]
        out.order[key] = [seq for seq, _n, _item in ranked]


def resolve(out: ParsedCommandLine, options: Sequence[OptionSpec],
            parser: CommandLineParser) -> None:
    """Join every front end to its back end, in command-line order, then order the items."""
    joiner = _Joiner(out, options, parser)
    for front in out.front_ends:
        joiner.join(front)
    _reorder(out)

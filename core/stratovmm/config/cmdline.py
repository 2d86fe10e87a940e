"""The StratoVirt-style command line → a config-file-shaped document.

Options are single-dash (``--name`` is accepted too).  Every option writes its
value where the JSON file would hold it; options with no file equivalent
(``-name``, ``-api-channel``, ``-daemonize``, ...) go to ``runtime``.  Every error
names the option and the reason.

v0.3's and StratoVirt 2.x's spellings are told apart option by option: an option
whose value begins with a registered word (``-netdev tap,...``, ``-chardev
socket,...``, ``-device DRIVER,...``, ``-object TYPE,...``) is that word's
option, any other value belongs to the option registered without a word
(``-netdev id=...``, v0.3's form).  2.x's back ends (``-chardev``, ``-object
rng-random``) are held by id and its front ends (``-device virtio-blk-device,
drive=ID``) are joined to them once the whole line is read (``joins.py``), so a
``-device`` may come before its back end, as in StratoVirt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from stratovmm.config.grammar import GrammarError, convert, split_items
from stratovmm.config.joins import resolve
from stratovmm.errors import ConfigError
from stratovmm.records import record
from stratovmm.registry import OptionSpec, ValueKind

if TYPE_CHECKING:
    from stratovmm.plugin import Named

HELP_FLAGS = ("-h", "--help", "-help")
VERSION_FLAGS = ("-V", "-version", "--version")      # StratoVirt's arg_parser: -V, --version

# What the leading word of each option's value is called in errors.
_WORD = {"device": "device driver", "object": "object type"}

# Options that need every plugin: a config file's keys are not on the command line, and a
# QMP socket offers every plugin's commands and hot-replace drivers.
EVERY_PLUGIN = ("-config", "-api-channel", "-qmp", "-mon")


def named_options(argv: list[str]) -> Named | None:
    """Each option ``argv`` names (as ``-name``) with the leading words its value may be
    picked by (``-device vsock,id=v0`` -> ``("-device", ("vsock",))``; ``-serial
    chardev:c0`` also gives ``chardev``), for choosing which plugins a start imports
    (``stratovmm.plugin.discover``).  It may name more than the parser will read (a value
    that starts with ``-`` counts as an option): that only imports more.  None when the
    run needs every plugin: help and version list them all, and ``EVERY_PLUGIN``."""
    named: Named = []
    for i, token in enumerate(argv):
        if token in HELP_FLAGS or token in VERSION_FLAGS:
            return None
        if not _is_option(token):
            continue
        name = "-" + token.lstrip("-")
        if name in EVERY_PLUGIN:
            return None
        word = argv[i + 1].partition(",")[0] if i + 1 < len(argv) else ""
        named.append((name, tuple({word, word.partition(":")[0]} - {""})))
    return named


@record
class FrontEnd:
    """A ``-device`` that names a back end, waiting for the whole line to be read."""

    spec: OptionSpec
    values: dict[str, Any]
    fragment: dict[str, Any]
    seq: int


@record
class ParsedCommandLine:
    """What the command line said, in config-file form plus runtime switches.

    ``backends`` holds the back ends (``-chardev socket,...``) by table and id;
    ``order`` the argv position of each item of a repeatable key, so that the items
    can be put in the order their devices were asked for.
    """

    document: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    provenance: dict[tuple[str, str], str] = field(default_factory=dict)
    help: bool = False
    version: bool = False
    backends: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    front_ends: list[FrontEnd] = field(default_factory=list)
    order: dict[str, list[int]] = field(default_factory=dict)

    def where(self, path: Sequence[str | int]) -> str:
        """The option that set the value at JSON ``path`` (for error messages)."""
        keys = [p for p in path if isinstance(p, str)]
        if keys:
            named = self.provenance.get((keys[0], keys[-1]))
            if named:
                return named
            named = self.provenance.get((keys[0], ""))
            if named:
                return named
        return "command line"


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1


def _value_optional(spec: OptionSpec) -> bool:
    """A ``key=value`` option whose keys are all optional and which has no implied
    leading value may stand alone (StratoVirt's ``-balloon``, ``can_no_value``)."""
    return (spec.style == "keyvalue" and spec.driver is None and spec.implied is None
            and bool(spec.sub) and not any(sub.required for sub in spec.sub))


def pick_spec(specs: list[OptionSpec], token: str, value: str) -> tuple[OptionSpec, str]:
    """The option among those sharing ``token``'s name that ``value`` is written for, and
    the rest of the value: a leading word picks the option registered with that word
    (``chardev:ID`` is the word ``chardev`` with the value ``ID``); other values go to
    the option registered without a word."""
    plain = next((s for s in specs if s.driver is None), None)
    worded = {s.driver: s for s in specs if s.driver is not None}
    if not worded:
        return specs[0], value
    word, comma, rest = value.partition(",")
    if word and "=" not in word:
        if word in worded:
            return worded[word], rest
        head, colon, tail = word.partition(":")
        if colon and head in worded and worded[head].implied is not None:
            return worded[head], tail + comma + rest
        if plain is not None and plain.implied is not None:
            return plain, value
    elif plain is not None:
        return plain, value
    noun = _WORD.get(specs[0].name, "type")
    known = ", ".join(sorted(str(d) for d in worded))
    if not word or "=" in word:
        raise ConfigError(f"{token}: the {noun} must come first ({token} WORD,...;"
                          f" known: {known})")
    raise ConfigError(f"{token}: unknown {noun} {word!r} (no installed plugin provides it;"
                      f" known: {known})")


def keyvalues(spec: OptionSpec, text: str) -> dict[str, Any]:
    """The values of ``key=value,...`` by key, converted; a leading bare value is the
    implied key's, a later bare word a ``FLAG`` key given alone."""
    try:
        items = split_items(text) if text else []
    except GrammarError as exc:
        raise ConfigError(f"{spec.display}: {exc}") from None
    values: dict[str, Any] = {}
    for n, (key, raw) in enumerate(items):
        if key is None:
            key, raw = _bare(spec, n, raw)
        sub = spec.subkey(key)
        if sub is None:
            known = ", ".join(s.key for s in spec.sub)
            raise ConfigError(f"{spec.display}: unknown key {key!r} (known: {known})")
        if key in values:
            raise ConfigError(f"{spec.display}: {key} given twice")
        try:
            values[key] = convert(sub, raw)
        except GrammarError as exc:
            raise ConfigError(f"{spec.display}: {exc}") from None
    missing = [s.key for s in spec.sub if s.required and s.key not in values]
    if missing:
        raise ConfigError(f"{spec.display}: missing {', '.join(k + '=' for k in missing)}")
    return values


def _bare(spec: OptionSpec, n: int, raw: str) -> tuple[str, str]:
    """The key a value written without ``key=`` belongs to."""
    if n == 0 and spec.implied is not None:
        return spec.implied, raw
    sub = spec.subkey(raw)
    if sub is not None and sub.kind is ValueKind.FLAG:
        return raw, "on"
    raise ConfigError(f"{spec.display}: {raw!r} needs a key (key=value)")


def fragment_of(spec: OptionSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The JSON fragment the option's values make: ``build`` when the option has one,
    else each value at its sub-option's field."""
    if spec.build is not None:
        try:
            return spec.build(values)
        except ValueError as exc:
            raise ConfigError(f"{spec.display}: {exc}") from None
    fields = {sub.key: sub.field for sub in spec.sub}
    fragment: dict[str, Any] = {}
    setter: dict[str, str] = {}
    for key, value in values.items():
        name = fields[key]
        if name is None:
            continue
        if name in setter:
            raise ConfigError(f"{spec.display}: {setter[name]} and {key} both set {name};"
                              " give one")
        fragment[name], setter[name] = value, key
    return fragment


def note_fields(out: ParsedCommandLine, spec: OptionSpec, fragment: Mapping[str, Any],
                given: Sequence[str] = ()) -> None:
    """Remember which option (and key) set each field, for schema errors; of two keys that
    fill one field (``fd``, ``fds``) the one ``given`` is named."""
    by_field = {sub.field: sub.key for sub in spec.sub
                if sub.field is not None and sub.key not in given}
    by_field.update({sub.field: sub.key for sub in spec.sub
                     if sub.field is not None and sub.key in given})
    for name in fragment:
        key = by_field.get(name)
        named = len(spec.sub) > 1 and key is not None and key != spec.implied
        out.provenance[(spec.json_key, name)] = f"{spec.display} {key}" if named \
            else spec.display
    out.provenance[(spec.json_key, "")] = spec.display


class CommandLineParser:
    """Parse argv against the registered options (core and plugins)."""

    def __init__(self, options: Mapping[tuple[str, str | None], OptionSpec],
                 single_device_keys: set[str]) -> None:
        self._by_name: dict[str, list[OptionSpec]] = {}
        for spec in options.values():
            self._by_name.setdefault(spec.name, []).append(spec)
        self._single = single_device_keys
        self._options = list(options.values())

    def parse(self, argv: list[str]) -> ParsedCommandLine:
        """Parse every option in ``argv``, then join the front ends to their back ends."""
        out = ParsedCommandLine()
        i = 0
        while i < len(argv):
            token = argv[i]
            if token in HELP_FLAGS or token in VERSION_FLAGS:
                out.help = out.help or token in HELP_FLAGS
                out.version = out.version or token in VERSION_FLAGS
                i += 1
                continue
            if not _is_option(token):
                raise ConfigError(f"unexpected argument {token!r} (options start with '-')")
            specs = self._by_name.get(token.lstrip("-"))
            if not specs:
                raise ConfigError(f"unknown option {token!r} (see --help for the options of the"
                                  " installed plugins)")
            base = next((s for s in specs if s.driver is None), specs[0])
            value, i = self._take_value(base, token, argv, i + 1)
            self._apply(out, specs, token, value, i)
        if not (out.help or out.version):
            resolve(out, self._options, self)
        return out

    @staticmethod
    def _take_value(spec: OptionSpec, token: str, argv: list[str], i: int) -> tuple[Any, int]:
        if spec.style == "flag":
            return True, i
        if spec.style == "optional":
            if i < len(argv) and not _is_option(argv[i]):
                return argv[i], i + 1
            return True, i
        if spec.style == "words":
            words = []
            while i < len(argv) and not _is_option(argv[i]):
                words.append(argv[i])
                i += 1
            if not words:
                raise ConfigError(f"{token}: needs a value")
            return " ".join(words), i
        if (i >= len(argv) or _is_option(argv[i])) and _value_optional(spec):
            return "", i        # -balloon alone: every sub-option at its default (as v0.3)
        if i >= len(argv):
            raise ConfigError(f"{token}: needs a value")
        return argv[i], i + 1

    def _apply(self, out: ParsedCommandLine, specs: list[OptionSpec], token: str,
               value: Any, seq: int) -> None:
        spec = specs[0]
        if isinstance(value, str) and (len(specs) > 1 or spec.driver is not None):
            spec, value = pick_spec(specs, token, value)
        if spec.style == "flag" or value is True:
            self._store_runtime_or_file(out, spec, True)
            return
        if spec.style in ("value", "words", "optional"):
            sub = spec.sub[0]
            try:
                converted = convert(sub, value)
            except GrammarError as exc:
                raise ConfigError(f"{spec.display}: {exc}") from None
            if spec.file_key and sub.field is not None:
                self.merge(out, spec, {sub.field: converted}, seq)
                out.provenance[(spec.json_key, sub.field)] = spec.display
            else:
                out.runtime[spec.json_key] = converted
            return
        values = keyvalues(spec, value)
        fragment = fragment_of(spec, values)
        if spec.backend:
            self._hold(out, spec, fragment)
        elif spec.join is not None:
            out.front_ends.append(FrontEnd(spec, values, fragment, seq))
        else:
            self.store(out, spec, fragment, seq, tuple(values))

    def store(self, out: ParsedCommandLine, spec: OptionSpec, fragment: dict[str, Any],
              seq: int, given: Sequence[str] = ()) -> None:
        """Put one option's fragment where the JSON file would hold it (or in runtime)."""
        if spec.nest is not None:
            fragment = {spec.nest: fragment}
        if spec.file_key:
            self.merge(out, spec, fragment, seq)
            note_fields(out, spec, fragment, given)
        else:
            out.runtime[spec.json_key] = fragment

    @staticmethod
    def _hold(out: ParsedCommandLine, spec: OptionSpec, fragment: dict[str, Any]) -> None:
        """Keep a back end by its id until a front end names it."""
        table = out.backends.setdefault(spec.json_key, {})
        if table and not spec.repeatable:
            raise ConfigError(f"{spec.display}: given twice (at most one is allowed)")
        ident = fragment.get(str(spec.id_field), "")
        if ident in table:
            raise ConfigError(f"{spec.display}: duplicate id {ident!r}")
        table[ident] = {**fragment, "kind": spec.driver}

    def _store_runtime_or_file(self, out: ParsedCommandLine, spec: OptionSpec,
                               value: Any) -> None:
        if spec.file_key:
            out.document[spec.json_key] = value
            out.provenance[(spec.json_key, "")] = spec.display
        else:
            out.runtime[spec.json_key] = value

    def merge(self, out: ParsedCommandLine, spec: OptionSpec, fragment: dict[str, Any],
              seq: int) -> None:
        """Add a repeatable option's item (refusing a duplicate id), or merge a single
        option's object (refusing a second device where one is allowed)."""
        doc = out.document
        if spec.repeatable:
            items = doc.setdefault(spec.json_key, [])
            if spec.id_field is not None:
                new_id = fragment.get(spec.id_field)
                if any(item.get(spec.id_field) == new_id for item in items):
                    raise ConfigError(f"{spec.display}: duplicate id {new_id!r}")
            items.append(fragment)
            out.order.setdefault(spec.json_key, []).append(seq)
            return
        if spec.json_key in self._single and spec.json_key in doc:
            raise ConfigError(f"{spec.display}: given twice (at most one is allowed)")
        doc.setdefault(spec.json_key, {}).update(fragment)

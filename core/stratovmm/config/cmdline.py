"""The StratoVirt-style command line → a config-file-shaped document.

Options are single-dash (``--name`` is accepted too).  Every option writes its
value where the JSON file would hold it; options with no file equivalent
(``-name``, ``-api-channel``, ``-daemonize``, ...) go to ``runtime``.  Every error
names the option and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stratovmm.config.grammar import GrammarError, convert, split_items
from stratovmm.errors import ConfigError
from stratovmm.registry import OptionSpec

HELP_FLAGS = ("-h", "--help", "-help")
VERSION_FLAGS = ("-V", "-version", "--version")      # StratoVirt's arg_parser: -V, --version


@dataclass
class ParsedCommandLine:
    """What the command line said, in config-file form plus runtime switches."""

    document: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    provenance: dict[tuple[str, str], str] = field(default_factory=dict)
    help: bool = False
    version: bool = False

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


class CommandLineParser:
    """Parse argv against the registered options (core and plugins)."""

    def __init__(self, options: Mapping[tuple[str, str | None], OptionSpec],
                 single_device_keys: set[str]) -> None:
        self._by_name: dict[str, list[OptionSpec]] = {}
        for spec in options.values():
            self._by_name.setdefault(spec.name, []).append(spec)
        self._single = single_device_keys

    def parse(self, argv: list[str]) -> ParsedCommandLine:
        """Parse every option in ``argv``."""
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
            value, i = self._take_value(specs[0], token, argv, i + 1)
            self._apply(out, specs, token, value)
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
               value: Any) -> None:
        spec = specs[0]
        if spec.driver is not None:
            spec, value = self._pick_driver(specs, token, value)
        if spec.style == "flag" or value is True:
            self._store_runtime_or_file(out, spec, True)
            return
        if spec.style in ("value", "words", "optional"):
            sub = spec.sub[0]
            try:
                converted = convert(sub, value)
            except GrammarError as exc:
                raise ConfigError(f"{spec.display}: {exc}") from None
            if spec.file_key:
                self._merge(out, spec, {sub.field: converted})
                out.provenance[(spec.json_key, sub.field)] = spec.display
            else:
                out.runtime[spec.json_key] = converted
            return
        fragment = self._keyvalues(spec, value)
        if spec.nest is not None:
            fragment = {spec.nest: fragment}
        if spec.file_key:
            self._merge(out, spec, fragment)
            for sub in spec.sub:
                out.provenance[(spec.json_key, sub.field)] = (
                    spec.display if len(spec.sub) == 1 else f"{spec.display} {sub.key}"
                )
            out.provenance[(spec.json_key, "")] = spec.display
        else:
            out.runtime[spec.json_key] = fragment

    @staticmethod
    def _pick_driver(specs: list[OptionSpec], token: str, value: str) -> tuple[OptionSpec, str]:
        driver, _, rest = value.partition(",")
        if "=" in driver:
            raise ConfigError(f"{token}: the device driver must come first ({token} DRIVER,...)")
        for spec in specs:
            if spec.driver == driver:
                return spec, rest
        known = ", ".join(sorted(str(s.driver) for s in specs))
        raise ConfigError(f"{token}: unknown device driver {driver!r} (installed: {known})")

    @staticmethod
    def _keyvalues(spec: OptionSpec, text: str) -> dict[str, Any]:
        try:
            items = split_items(text) if text else []
        except GrammarError as exc:
            raise ConfigError(f"{spec.display}: {exc}") from None
        fragment: dict[str, Any] = {}
        seen: set[str] = set()
        for n, (key, raw) in enumerate(items):
            if key is None:
                if n != 0 or spec.implied is None:
                    raise ConfigError(f"{spec.display}: {raw!r} needs a key (key=value)")
                key = spec.implied
            sub = spec.subkey(key)
            if sub is None:
                known = ", ".join(s.key for s in spec.sub)
                raise ConfigError(f"{spec.display}: unknown key {key!r} (known: {known})")
            if key in seen:
                raise ConfigError(f"{spec.display}: {key} given twice")
            seen.add(key)
            try:
                fragment[sub.field] = convert(sub, raw)
            except GrammarError as exc:
                raise ConfigError(f"{spec.display}: {exc}") from None
        missing = [s.key for s in spec.sub if s.required and s.key not in seen]
        if missing:
            raise ConfigError(f"{spec.display}: missing {', '.join(k + '=' for k in missing)}")
        return fragment

    def _store_runtime_or_file(self, out: ParsedCommandLine, spec: OptionSpec,
                               value: Any) -> None:
        if spec.file_key:
            out.document[spec.json_key] = value
            out.provenance[(spec.json_key, "")] = spec.display
        else:
            out.runtime[spec.json_key] = value

    def _merge(self, out: ParsedCommandLine, spec: OptionSpec, fragment: dict[str, Any]) -> None:
        doc = out.document
        if spec.repeatable:
            items = doc.setdefault(spec.json_key, [])
            if spec.id_field is not None:
                new_id = fragment.get(spec.id_field)
                if any(item.get(spec.id_field) == new_id for item in items):
                    raise ConfigError(f"{spec.display}: duplicate id {new_id!r}")
            items.append(fragment)
            return
        if spec.json_key in self._single and spec.json_key in doc:
            raise ConfigError(f"{spec.display}: given twice (at most one is allowed)")
        doc.setdefault(spec.json_key, {}).update(fragment)

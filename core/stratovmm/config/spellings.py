"""The JSON file's other spellings that StratoVirt v0.3 accepts, rewritten to the
schema's one spelling before the file is validated.

v0.3 reads ``machine-config`` leniently (``MachineConfig::from_value`` in
``machine_manager/src/config/machine_config.rs``): every value is turned into
text, quotes dropped, then parsed per key, so ``"vcpu_count": "2"``,
``"mem_size": "1024M"`` (also ``G``; and ``K`` here) and ``"mem_share": "true"``
work as well as their JSON types, and ``type`` is compared case-insensitively.
StratoVirt's guide spells the RAM-sharing key ``mem-share`` (the command line's
spelling) while v0.3's parser reads ``mem_share``; both are taken here.  Values
that do not convert are left as they are, so the schema check names the key and
says what it expected.
"""

from __future__ import annotations

from typing import Any

from stratovmm.config.grammar import GrammarError, parse_size
from stratovmm.errors import ConfigError

MACHINE_KEY = "machine-config"
# -machine's hyphenated names (the guide writes "mem-share" in its JSON example too),
# accepted as JSON keys beside the file's own
KEY_ALIASES = {"mem-share": "mem_share", "dump-guest-core": "dump_guest_core"}


def _machine_type(value: Any) -> Any:
    if isinstance(value, str) and value.lower() == "microvm":
        return "MicroVm"
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def _size(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_size(value)
        except GrammarError:
            return value
    return value


def _boolean(value: Any) -> Any:
    """Rust's ``bool::from_str``, which v0.3 applies: exactly ``true`` or ``false``."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


_CONVERT = {"type": _machine_type, "vcpu_count": _integer, "mem_size": _size,
            "mem_share": _boolean, "dump_guest_core": _boolean}


def canonical_machine_config(section: dict[str, Any], where: str) -> dict[str, Any]:
    """``machine-config`` with aliases renamed and v0.3's text values converted."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = KEY_ALIASES.get(key, key)
        if name in out:
            raise ConfigError(f"{where}: {MACHINE_KEY}: {name} is given twice"
                              f" (as {name!r} and {key!r})")
        convert = _CONVERT.get(name)
        out[name] = convert(value) if convert is not None else value
    return out


def canonical_document(document: Any, where: str) -> Any:
    """The parsed config file with StratoVirt's other spellings made canonical (anything
    that is not an object is returned as it is, for the schema check to refuse)."""
    if not isinstance(document, dict):
        return document
    section = document.get(MACHINE_KEY)
    if not isinstance(section, dict):
        return document
    return {**document, MACHINE_KEY: canonical_machine_config(section, where)}

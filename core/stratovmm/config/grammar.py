"""The ``key=value[,key=value...]`` grammar and value conversions.

Commas inside a value are written doubled (``,,``), as in QEMU.  A leading
item without ``=`` is the option's implied key (``-smp 2`` = ``-smp cpus=2``,
``-device vsock,...`` names the driver); a later one is a ``FLAG`` key given
alone (``-chardev socket,...,server,nowait``).
"""

from __future__ import annotations

import re
from typing import Any

from stratovmm.registry import SubOption, ValueKind

_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_TRUE = {"on", "true", "yes"}
_FALSE = {"off", "false", "no"}


class GrammarError(ValueError):
    """A value the grammar cannot read; the caller adds the option's name."""


def split_items(text: str) -> list[tuple[str | None, str]]:
    """``"a,b=1,c=x,,y"`` → ``[(None, "a"), ("b", "1"), ("c", "x,y")]``."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    out: list[tuple[str | None, str]] = []
    for item in items:
        if item == "":
            raise GrammarError("empty item (stray comma?)")
        key, sep, value = item.partition("=")
        out.append((key, value) if sep else (None, item))
    return out


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"256M"``, ``"1g"``, ``"512k"``."""
    m = _SIZE.match(text.strip())
    if not m:
        raise GrammarError(f"{text!r} is not a size (bytes, or a number with K, M or G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(value: int) -> str:
    """The shortest exact K/M/G spelling of ``value`` bytes."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def parse_bool(text: str) -> bool:
    """``on|off|true|false`` (and yes/no)."""
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise GrammarError(f"{text!r} is not on/off/true/false")


def convert(sub: SubOption, text: str) -> Any:
    """The JSON value of sub-option ``sub`` written as ``text``."""
    if sub.parse is not None:
        try:
            return sub.parse(text)
        except ValueError as exc:
            raise GrammarError(f"{sub.key}={text!r}: {exc}") from None
    if sub.values is not None:
        if text.lower() not in sub.values:
            raise GrammarError(f"{sub.key}={text!r}: must be one of {', '.join(sub.values)}")
        return sub.values[text.lower()]
    if sub.kind is ValueKind.INT:
        try:
            return int(text, 10)
        except ValueError:
            raise GrammarError(f"{sub.key}={text!r} is not an integer") from None
    if sub.kind in (ValueKind.BOOL, ValueKind.FLAG):
        try:
            return parse_bool(text)
        except GrammarError as exc:
            raise GrammarError(f"{sub.key}={exc}") from None
    if sub.kind is ValueKind.SIZE:
        try:
            return parse_size(text)
        except GrammarError as exc:
            raise GrammarError(f"{sub.key}: {exc}") from None
    if sub.kind is ValueKind.PATH and text == "":
        raise GrammarError(f"{sub.key}: empty path")
    return text

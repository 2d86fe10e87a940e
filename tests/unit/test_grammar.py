"""The ``key=value[,key=value...]`` grammar and its value conversions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratovmm.config.grammar import (
    GrammarError,
    convert,
    format_size,
    parse_bool,
    parse_size,
    split_items,
)
from stratovmm.registry import SubOption, ValueKind


@pytest.mark.parametrize(("text", "items"), [
    ("a", [(None, "a")]),
    ("a,b=1", [(None, "a"), ("b", "1")]),
    ("b=1,c=x,,y", [("b", "1"), ("c", "x,y")]),
    ("c=,,", [("c", ",")]),
    ("k=a=b", [("k", "a=b")]),
    ("k=", [("k", "")]),
    ("vsock,id=v,guest-cid=3", [(None, "vsock"), ("id", "v"), ("guest-cid", "3")]),
])
def test_split_items(text: str, items: list[tuple[str | None, str]]) -> None:
    """Items split on single commas; ',,' is a literal comma; a bare first item has no key."""
    assert split_items(text) == items


@pytest.mark.parametrize("text", ["", "a,", ",a", "a,,,b=1,", "a=1,,,"])
def test_split_items_empty_item(text: str) -> None:
    """A stray comma (an empty item) is an error."""
    with pytest.raises(GrammarError, match="empty item"):
        split_items(text)


_VALUE = st.text(alphabet=st.characters(codec="utf-8"), min_size=1)
_KEY = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)


@given(st.lists(st.tuples(_KEY, _VALUE), min_size=1, max_size=6))
def test_split_items_round_trip(pairs: list[tuple[str, str]]) -> None:
    """Any keys and values, commas doubled when written, come back exactly."""
    text = ",".join(f"{k}={v.replace(',', ',,')}" for k, v in pairs)
    assert split_items(text) == [(k, v) for k, v in pairs]


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("4096", 4096), ("1k", 1024), ("1K", 1024), ("256M", 256 << 20),
    ("256m", 256 << 20), ("2G", 2 << 30), ("2g", 2 << 30), (" 3M ", 3 << 20),
])
def test_parse_size(text: str, value: int) -> None:
    """Bytes, or a number with K/M/G in either case."""
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1T", "1.5G", "-1M", "0x100", "12 M", "1MB"])
def test_parse_size_rejects(text: str) -> None:
    """Anything else is not a size, and the message quotes it."""
    with pytest.raises(GrammarError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("value", "text"), [
    (256 << 20, "256M"), (1 << 30, "1G"), (1536 << 20, "1536M"), (4096, "4K"), (1000, "1000"),
    (0, "0"),
])
def test_format_size(value: int, text: str) -> None:
    """The shortest exact spelling with a suffix."""
    assert format_size(value) == text


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_size_round_trip(value: int) -> None:
    """format_size and parse_size are inverse."""
    assert parse_size(format_size(value)) == value


@pytest.mark.parametrize(("text", "value"), [
    ("on", True), ("off", False), ("true", True), ("false", False), ("yes", True), ("no", False),
    ("On", True), ("TRUE", True),
])
def test_parse_bool(text: str, value: bool) -> None:
    """on|off|true|false (and yes|no), any case."""
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "1", "0", "enable", "onn"])
def test_parse_bool_rejects(text: str) -> None:
    """Other words are errors."""
    with pytest.raises(GrammarError, match="is not on/off/true/false"):
        parse_bool(text)


def test_convert_by_kind() -> None:
    """Each sub-option kind converts its text to the JSON value."""
    assert convert(SubOption("n", "n", ValueKind.INT), "42") == 42
    assert convert(SubOption("n", "n", ValueKind.INT), "-3") == -3
    assert convert(SubOption("b", "b", ValueKind.BOOL), "off") is False
    assert convert(SubOption("s", "s", ValueKind.SIZE), "1M") == 1 << 20
    assert convert(SubOption("p", "p", ValueKind.PATH), "/x") == "/x"
    assert convert(SubOption("t", "t", ValueKind.STR), "") == ""
    assert convert(SubOption("m", "m", values={"microvm": "MicroVm"}), "MicroVM") == "MicroVm"


@pytest.mark.parametrize(("sub", "text", "message"), [
    (SubOption("n", "n", ValueKind.INT), "4x", "n='4x' is not an integer"),
    (SubOption("n", "n", ValueKind.INT), "", "n='' is not an integer"),
    (SubOption("b", "b", ValueKind.BOOL), "maybe", "b='maybe' is not on/off/true/false"),
    (SubOption("s", "s", ValueKind.SIZE), "lots", "s: 'lots' is not a size"),
    (SubOption("p", "p", ValueKind.PATH), "", "p: empty path"),
    (SubOption("m", "m", values={"microvm": "MicroVm"}), "pc", "m='pc': must be one of microvm"),
])
def test_convert_errors_name_the_key(sub: SubOption, text: str, message: str) -> None:
    """Conversion errors name the sub-option key and quote the text."""
    with pytest.raises(GrammarError) as info:
        convert(sub, text)
    assert str(info.value).startswith(message)

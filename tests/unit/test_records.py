"""``stratovmm.records.record`` behaves as ``dataclasses.dataclass`` for what the VMM's
records use: construction (positional, keyword, defaults, default factories, the
errors of a bad call), repr, equality and hashing (``compare=False`` left out), frozen
assignment refused, slots, ``__match_args__``, and ``field_names``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratovmm.records import field_names, record, replace


def pair(frozen: bool, slots: bool = False) -> tuple[Any, Any]:
    """The same class body under ``@dataclass`` and under ``@record``."""

    def body() -> type:
        class Thing:
            """A record with every kind of field."""

            a: int
            b: str = "b"
            c: list[int] = dataclasses.field(default_factory=list)
            d: int = dataclasses.field(default=4, compare=False, repr=False)

        return Thing

    return (dataclasses.dataclass(frozen=frozen, slots=slots)(body()),
            record(frozen=frozen, slots=slots)(body()))


FLAVOURS = [(False, False), (True, False), (True, True), (False, True)]
values = st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
calls = st.tuples(st.lists(values, max_size=5),
                  st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), values,
                                  max_size=3))


def outcome(cls: type, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, Any]:
    """What constructing gives: the fields' values, or the exception's kind (CPython's
    messages differ in wording between the two, the kind of error does not)."""
    try:
        obj = cls(*args, **kwargs)
    except TypeError:
        return ("TypeError", None)
    return ("ok", (obj.a, obj.b, obj.c, obj.d, repr(obj).split("(", 1)[1]))


@pytest.mark.parametrize(("frozen", "slots"), FLAVOURS)
@given(call=calls)
def test_construction_and_repr_match_dataclass(frozen: bool, slots: bool,
                                               call: tuple[list[Any], dict[str, Any]]) -> None:
    """Any call: the same values and repr, or a TypeError from both."""
    dc, rec = pair(frozen, slots)
    args, kwargs = call
    assert outcome(dc, args, kwargs) == outcome(rec, args, kwargs)


def hashes(obj: object) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize(("frozen", "slots"), FLAVOURS)
@given(x=st.tuples(st.integers(0, 2), st.sampled_from("xy"), st.integers(0, 2)),
       y=st.tuples(st.integers(0, 2), st.sampled_from("xy"), st.integers(0, 2)))
def test_equality_and_hash_match_dataclass(frozen: bool, slots: bool,
                                           x: tuple[int, str, int],
                                           y: tuple[int, str, int]) -> None:
    """Equal exactly when the dataclass instances are (``d``, compare=False, ignored),
    never equal to the other class's instance; hashable exactly when the dataclass is
    (frozen, and no list among the compared fields), and then equal means equal hash."""
    dc, rec = pair(frozen, slots)
    dx, dy = dc(x[0], x[1], d=x[2]), dc(y[0], y[1], d=y[2])
    rx, ry = rec(x[0], x[1], d=x[2]), rec(y[0], y[1], d=y[2])
    assert (rx == ry) == (dx == dy)
    assert rx != dx
    assert hashes(rx) == hashes(dx)
    small_dc: Any = dataclasses.dataclass(frozen=frozen)(small())
    small_rec: Any = record(frozen=frozen)(small())
    hx, hy = small_rec(*x), small_rec(*y)
    assert hashes(hx) == hashes(small_dc(*x)) == frozen
    if frozen and hx == hy:
        assert hash(hx) == hash(hy)


def small() -> type:
    class Small:
        """Fields that all hash."""

        a: int
        b: str
        d: int = dataclasses.field(default=0, compare=False)

    return Small


@pytest.mark.parametrize("slots", [False, True])
def test_frozen_refuses_assignment(slots: bool) -> None:
    _dc, rec = pair(True, slots)
    thing = rec(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        thing.a = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        del thing.a
    assert thing.a == 1


def test_not_frozen_assigns_and_slots_have_no_dict() -> None:
    _dc, rec = pair(False)
    thing = rec(1)
    thing.a = 2
    assert thing.a == 2
    _dc, slotted = pair(True, slots=True)
    assert not hasattr(slotted(1), "__dict__")
    assert slotted.__slots__ == ("a", "b", "c", "d")


def test_default_factory_gives_each_instance_its_own() -> None:
    _dc, rec = pair(True)
    one, two = rec(1), rec(1)
    one.c.append(5)
    assert two.c == []


def test_match_args_and_field_names() -> None:
    _dc, rec = pair(True, slots=True)
    thing = rec(1, "x", [2], 3)
    assert rec.__match_args__ == field_names(rec) == field_names(thing) == ("a", "b", "c", "d")
    match thing:
        case rec(a, b):
            assert (a, b) == (1, "x")


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        @record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


@pytest.mark.parametrize(("frozen", "slots"), FLAVOURS)
def test_replace_matches_dataclass(frozen: bool, slots: bool) -> None:
    """``replace`` gives what ``dataclasses.replace`` gives, and refuses an unknown field."""
    dc, rec = pair(frozen, slots)
    for changes in ({}, {"a": 9}, {"b": "z", "c": [1]}, {"d": 7}):
        want = dataclasses.replace(dc(1, "x", [2], 3), **changes)
        got = replace(rec(1, "x", [2], 3), **changes)
        assert (got.a, got.b, got.c, got.d) == (want.a, want.b, want.c, want.d)
        assert type(got) is rec
    with pytest.raises(TypeError, match="unexpected keyword argument 'e'"):
        dataclasses.replace(dc(1), e=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'e'"):
        replace(rec(1), e=1)

"""GuestMemory's range check against a plain model: a guest range is accepted only when it
lies wholly inside one RAM region (the MMIO hole between regions is not RAM), empty ranges
included, and whatever is accepted maps to the right byte of the host buffer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratovmm.errors import GuestMemoryError
from stratovmm.memory import GuestMemory

LOW = (0x0, 0x3000)           # RAM below the hole
HIGH = (0x8000, 0x2000)       # RAM above it
LIMIT = 0xC000


def memory() -> GuestMemory:
    """Two regions with a hole between them, each host byte holding its offset's low bits."""
    buffer = bytearray(i & 0xFF for i in range(LOW[1] + HIGH[1]))
    return GuestMemory(buffer, [LOW, HIGH])


def inside_one_region(gpa: int, length: int) -> bool:
    """The model: [gpa, gpa+length) within one region's [start, end]."""
    return length >= 0 and any(start <= gpa and gpa + length <= start + size
                               for start, size in (LOW, HIGH))


def host_offset(gpa: int) -> int:
    """Where guest address ``gpa`` (or the end of a region) lives in the host buffer."""
    return gpa if gpa <= LOW[0] + LOW[1] else LOW[1] + gpa - HIGH[0]


edges = st.sampled_from([0, LOW[1] - 1, LOW[1], LOW[1] + 1, HIGH[0] - 1, HIGH[0], HIGH[0] + 1,
                         HIGH[0] + HIGH[1] - 1, HIGH[0] + HIGH[1], 2**64 - 1])


@given(gpa=st.one_of(edges, st.integers(-16, LIMIT)),
       length=st.one_of(st.sampled_from([0, 1, 2**64, -1]), st.integers(-4, LIMIT)))
def test_contains_matches_the_model(gpa: int, length: int) -> None:
    """Accepted exactly when the model says so; an accepted non-empty range reads the bytes
    of the right place in the host buffer."""
    mem = memory()
    expected = inside_one_region(gpa, length)
    assert mem.contains(gpa, length) == expected, (hex(gpa), length)
    if expected and length:
        data = mem.read(gpa, min(length, 4))
        start = host_offset(gpa)
        assert data == bytes(i & 0xFF for i in range(start, start + len(data)))
    elif not expected:
        with pytest.raises(GuestMemoryError):
            mem.slice(gpa, length)


def test_empty_range_at_a_region_end_is_accepted() -> None:
    """A zero-length range may start at a region's end (a descriptor of length 0 pointing
    just past RAM is not an access), one byte there may not."""
    mem = memory()
    assert mem.contains(LOW[1], 0) and not mem.contains(LOW[1], 1)
    assert mem.contains(HIGH[0] + HIGH[1], 0) and not mem.contains(HIGH[0] + HIGH[1], 1)
    assert not mem.contains(LOW[1] + 1, 0)

"""The C run loop's view of a bus (``ExitWindows``, ``svmm_unclaimed``, ``svmm_lookup``)
against the bus itself: for any set of windows and any address, C calls an address
unclaimed exactly when ``Bus.find`` finds no device there, and finds the window's offset
and registers when one does; while a rewrite is under way, or when the windows do not fit
the table, C calls nothing unclaimed (the exit goes to Python)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from stratovmm.kvm._kvm import ffi, lib

from stratovmm.kvm.fds import ExitWindows
from stratovmm.machine.bus import Bus


class Window:
    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        pass


@st.composite
def windows(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Non-overlapping (base, length) windows anywhere in 64 bits."""
    cuts = sorted(draw(st.sets(st.integers(0, 2**64 - 1), max_size=40)))
    pairs = []
    for start, end in zip(cuts[::2], cuts[1::2], strict=False):
        if draw(st.booleans()):
            pairs.append((start, end - start))
    return pairs


def near(pairs: list[tuple[int, int]]) -> st.SearchStrategy[int]:
    edges = [a + d for base, length in pairs for a in (base, base + length) for d in (-1, 0, 1)]
    return st.one_of(st.integers(0, 2**64 - 1),
                     st.sampled_from([e % 2**64 for e in edges] or [0]))


@given(st.data())
def test_c_agrees_with_the_bus(data: st.DataObject) -> None:
    pairs = data.draw(windows())
    bus = Bus("test")
    table = ExitWindows()
    bus.mirror(table.publish)
    for base, length in pairs:
        bus.insert(Window(), base, length, f"w{base:x}")
    offset, regs = ffi.new("uint64_t *"), ffi.new("struct svmm_regs **")
    for addr in data.draw(st.lists(near(pairs), min_size=1, max_size=20)):
        found = bus.find(addr)
        assert bool(lib.svmm_unclaimed(table.table, addr)) == (found is None)
        assert lib.svmm_lookup(table.table, addr, offset, regs) == (found is None)
        if found is not None:
            assert offset[0] == found[1]
            assert regs[0] == ffi.NULL           # these windows give C no registers
    if pairs:
        bus.remove(pairs[0][0])
        assert lib.svmm_unclaimed(table.table, pairs[0][0]) == 1


def test_a_table_being_rewritten_claims_everything() -> None:
    table = ExitWindows()
    table.publish([(0x1000, 0x10, None)])
    assert lib.svmm_unclaimed(table.table, 0x2000) == 1
    table.table.seq += 1            # as publish() leaves it between its two increments
    assert lib.svmm_unclaimed(table.table, 0x2000) == 0


def test_too_many_windows_send_every_exit_to_python() -> None:
    table = ExitWindows()
    table.publish([(i * 16, 8, None) for i in range(lib.SVMM_MAX_WINDOWS + 1)])
    assert lib.svmm_unclaimed(table.table, 8) == 0
    assert lib.svmm_unclaimed(table.table, 2**63) == 0
    table.publish([(0, 8, None)])
    assert lib.svmm_unclaimed(table.table, 8) == 1

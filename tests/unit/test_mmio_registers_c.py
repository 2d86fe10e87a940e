"""The virtio-mmio registers the vCPUs' C run loop answers (``svmm_mmio_register`` over a
transport's ``register_cells()``) against the transport's own Python register code: for
any access a driver may make, C either leaves it to Python or does exactly what Python
does — the same value read, the same InterruptStatus after an ACK — while the device side
raises interrupt bits in between (virtio 1.2 §4.2.2)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from stratovmm.kvm._kvm import ffi, lib

from stratovmm.testing.harness import DeviceHarness
from stratovmm.virtio import constants as c
from stratovmm.virtio.device import VirtioDevice

ANSWERED_IN_C = {c.MAGIC_VALUE, c.VERSION, c.DEVICE_ID, c.VENDOR_ID, c.INTERRUPT_STATUS}


class Device(VirtioDevice):
    DEVICE_TYPE = 4
    QUEUE_SIZES = (8,)


def c_access(harness: DeviceHarness, offset: int, size: int, write: bytes | None) -> bytes | None:
    """The access through C: the bytes read (or b"" for a write), None when C declines."""
    data = ffi.new("uint8_t[8]", write or b"")
    cells = harness.transport.register_cells().cells
    if not lib.svmm_mmio_register(cells, offset, size, 1 if write is not None else 0, data):
        return None
    return b"" if write is not None else bytes(ffi.buffer(data, size))


access = st.tuples(
    st.one_of(st.sampled_from(sorted(ANSWERED_IN_C | {c.INTERRUPT_ACK, c.STATUS, 0x100})),
              st.integers(0, 0x10F)),
    st.sampled_from([1, 2, 4, 4, 4, 8]),
    st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)),
    st.sampled_from([0, c.INT_USED_RING, c.INT_CONFIG, 3]),
)


@settings(max_examples=300, deadline=None)
@given(accesses=st.lists(access, min_size=1, max_size=12))
def test_c_registers_do_what_the_transport_does(accesses: list[tuple[int, int, int | None, int]],
                                                ) -> None:
    mirrors = [DeviceHarness(Device("d0")), DeviceHarness(Device("d1"))]   # C, Python
    for offset, size, value, raised in accesses:
        for harness in mirrors:
            harness.transport.interrupt_status |= raised   # the device side, in between
        write = None if value is None else struct.pack("<Q", value)[:size]
        answer = c_access(mirrors[0], offset, size, write)
        if answer is None:                       # C declined: Python answers both
            assert offset not in ANSWERED_IN_C | {c.INTERRUPT_ACK} or size != 4 or (
                write is None) == (offset == c.INTERRUPT_ACK)
            for harness in mirrors:
                (harness.transport.read(offset, size) if write is None
                 else harness.transport.write(offset, write))
            continue
        assert size == 4
        if write is None:
            assert answer == mirrors[1].transport.read(offset, size)
        else:
            assert offset == c.INTERRUPT_ACK
            mirrors[1].transport.write(offset, write)
        assert mirrors[0].transport.interrupt_status == mirrors[1].transport.interrupt_status


def test_an_ack_in_c_keeps_the_bits_raised_meanwhile() -> None:
    """The device side raising a bit and a vCPU acknowledging another, in any order, never
    lose the raised bit: both go through atomic operations on the same cell."""
    harness = DeviceHarness(Device("d0"))
    transport = harness.transport
    transport.signal_used()
    assert c_access(harness, c.INTERRUPT_STATUS, 4, None) == struct.pack("<I", c.INT_USED_RING)
    transport.signal_config()
    assert c_access(harness, c.INTERRUPT_ACK, 4, struct.pack("<I", c.INT_USED_RING)) == b""
    assert transport.interrupt_status == c.INT_CONFIG
    assert harness.read_reg(c.INTERRUPT_STATUS) == c.INT_CONFIG

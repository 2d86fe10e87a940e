"""A hostile guest driver as a hypothesis state machine, for one virtio device behind the
real virtio-mmio transport on bytearray guest RAM (no KVM).

The machine does what a guest can: random register reads and writes, correct and
incorrect feature negotiation, queue set-up with good and bad sizes and addresses,
resets in the middle of I/O, descriptor tables both well formed (requests the device
understands) and random (any address, length, flag and next index), indirect tables,
avail indices that jump, scribbles over its own rings, config space accesses; the test
file's subclasses add what the host side of each device does (a socket peer, a QMP
balloon target).  After every step it checks:

- nothing outside guest RAM was touched (a canary lies right past RAM in the buffer);
- no exception reached the vCPU boundary (a transport access raising fails the step)
  or the event-loop boundary (the loop's error log, the device's ``internal_errors``);
- host memory held by the device stays bounded (its buffers, the loop's queues);
- every chain the device took from a ring was returned, or is held on purpose (an rx
  buffer waiting for data), or the device asked for a reset (DEVICE_NEEDS_RESET);
- while DRIVER_OK is clear (after a reset) the device writes nothing into guest RAM.

Each example serves its queues on the ring's C path or the pure-Python one (drawn).

CI runs ``EXAMPLES`` examples of ``STEPS`` steps per device (about a second each);
``STRATOVMM_FUZZ_EXAMPLES`` raises the example count for a long run.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from stratovmm.fastpath import FASTPATH_ENV
from stratovmm.host.eventloop import EventLoop
from stratovmm.memory import GuestMemory
from stratovmm.testing.kicks import EventfdIrq
from stratovmm.virtio import constants as c
from stratovmm.virtio.constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.mmio import VirtioMmioTransport

RAM = 0x40000                       # 256 KiB of guest RAM at guest address 0
CANARY = b"\xa5" * 4096             # right after RAM in the host buffer
MMIO_BASE = 0xD000_0000
RING_AREA = 0x2000                  # the rings of queue i live at RING_AREA * (i + 1)
DATA = 0x10000                      # request buffers: DATA .. RAM
DESC = struct.Struct("<QIHH")
STEPS = 40
EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "0")) or 40
LOOP_BACKLOG = 16                   # callbacks the device may leave queued on its loop

ACK, DRV, FOK, DOK = (c.STATUS_ACKNOWLEDGE, c.STATUS_DRIVER, c.STATUS_FEATURES_OK,
                      c.STATUS_DRIVER_OK)
REGISTERS = (c.MAGIC_VALUE, c.VERSION, c.DEVICE_ID, c.VENDOR_ID, c.DEVICE_FEATURES,
             c.DEVICE_FEATURES_SEL, c.DRIVER_FEATURES, c.DRIVER_FEATURES_SEL, c.QUEUE_SEL,
             c.QUEUE_NUM_MAX, c.QUEUE_NUM, c.QUEUE_READY, c.QUEUE_NOTIFY, c.INTERRUPT_STATUS,
             c.INTERRUPT_ACK, c.STATUS, c.QUEUE_DESC_LOW, c.QUEUE_DESC_HIGH,
             c.QUEUE_DRIVER_LOW, c.QUEUE_DRIVER_HIGH, c.QUEUE_DEVICE_LOW, c.QUEUE_DEVICE_HIGH,
             c.SHM_SEL, c.SHM_LEN_LOW, c.CONFIG_GENERATION)

stateful_settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                             suppress_health_check=list(HealthCheck))

# -- what a hostile driver writes ---------------------------------------------------------------

addresses = st.one_of(
    st.integers(DATA, RAM - 1),                          # plausible buffers
    st.integers(0, RAM + 64),                            # anywhere, rings included
    st.integers(RAM - 64, RAM + 64),                     # the end of RAM
    st.integers(2**64 - 4096, 2**64 - 1),                # overflow bait
    st.sampled_from([MMIO_BASE, 1 << 32, 1 << 40]),      # holes
)
lengths = st.one_of(st.integers(0, 600), st.sampled_from([1, 16, 44, 512, 4096, RAM,
                                                          2**31, 2**32 - 1]))
descriptors = st.tuples(addresses, lengths, st.integers(0, 7), st.integers(0, 40))
register_values = st.one_of(
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64, 256, 1 << 15, 0xFFFFFFFF]),
    st.sampled_from([ACK, ACK | DRV, ACK | DRV | FOK, ACK | DRV | FOK | DOK, c.STATUS_FAILED,
                     c.STATUS_DEVICE_NEEDS_RESET]),
    st.integers(0, RAM // 0x1000).map(lambda page: page * 0x1000),
)
queue_sizes = st.sampled_from([16, 16, 16, 16, 16, 8, 8, 4, 4, 2, 1, 1, 16, 16, 0, 3, 512])


class LoopErrors(logging.Handler):
    """Collects what the event loop and the virtio core log at ERROR: an exception that
    reached the loop's dispatcher, a device stopped by an internal error."""

    LOGGERS = ("stratovmm.host.eventloop", "stratovmm.virtio.device", "stratovmm.virtio.mmio")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))

    def attach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


class VirtioGuest(RuleBasedStateMachine):
    """The guest side of one device; subclasses build the device (``make_device``), say
    which requests it understands (``request``), what it holds on purpose (``held``) and
    how much host memory it may keep (``host_bytes``/``HOST_BYTES_MAX``)."""

    HOST_BYTES_MAX = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="stratovmm-stateful-")
        self.loop = EventLoop("stateful")
        self.buffer = bytearray(RAM) + bytearray(CANARY)
        self.memory = GuestMemory(self.buffer, [(0, RAM)])
        self.errors = LoopErrors()
        self.errors.attach()
        self.device: VirtioDevice | None = None
        self.transport: VirtioMmioTransport | None = None
        self.sizes: list[int] = []
        self.avail: list[int] = []
        self.next_data = DATA
        self.interrupts = 0
        self.irqfd: EventfdIrq | None = None
        self.saved_fastpath: str | None = None

    # -- what subclasses provide ----------------------------------------------------------

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        """The device under test, with its real host backend."""
        raise NotImplementedError

    def request(self, data: st.DataObject, queue: int) -> list[tuple[bytes, int, bool]]:
        """A request the device understands on ``queue``: (content, length, writable) per
        buffer, in chain order."""
        raise NotImplementedError

    def held(self, queue: int) -> int:
        """Chains of ``queue`` the device keeps on purpose (rx buffers waiting for data)."""
        assert self.device is not None
        return self.device.held_chains(queue)

    def host_bytes(self) -> int:
        """Host memory the device holds in its own buffers."""
        return 0

    def close_backend(self) -> None:
        """Release what ``make_device`` made beside the device."""

    # -- set-up and teardown ---------------------------------------------------------------

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        # the ring's C path or the pure-Python one (read when each queue is made), both held
        # to every invariant below
        fast = data.draw(st.booleans(), label="fastpath")
        self.saved_fastpath = os.environ.get(FASTPATH_ENV)
        os.environ[FASTPATH_ENV] = "1" if fast else "0"
        self.device = self.make_device(data)
        # a small budget makes every kick end in a retry on a later loop turn
        self.device.SERVE_BUDGET = data.draw(st.sampled_from([1, 2, 64]), label="budget")
        # kicks as KVM delivers them (the queue's ioeventfd) and an irqfd: the device's loop
        # then serves the queues its C handler may take in C (stratovmm.virtio.kicks)
        self.irqfd = EventfdIrq() if fast and data.draw(st.booleans(), label="kicks in C") \
            else None
        self.transport = VirtioMmioTransport(self.device, None, self.memory, MMIO_BASE,
                                             self._irq if self.irqfd is None else self.irqfd,
                                             self.loop)
        self.sizes = [0] * len(self.device.QUEUE_SIZES)
        self.avail = [0] * len(self.device.QUEUE_SIZES)

    def _irq(self) -> None:
        self.interrupts += 1

    def teardown(self) -> None:
        try:
            if self.transport is not None:
                for _ in range(4):
                    self.loop.run_once(0)          # pending resets close their eventfds
                self.transport.close()
            if self.device is not None:
                self.device.close()
            self.close_backend()
        finally:
            self.loop.close()
            if self.irqfd is not None:
                self.irqfd.close()
            self.errors.detach()
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.saved_fastpath is None:
                os.environ.pop(FASTPATH_ENV, None)
            else:
                os.environ[FASTPATH_ENV] = self.saved_fastpath

    # -- register access (a vCPU) -----------------------------------------------------------

    def write_reg(self, offset: int, value: int) -> None:
        assert self.transport is not None
        if offset == c.QUEUE_NOTIFY and self.irqfd is not None:
            bound = dict(self.transport._eventfds)     # KVM's ioeventfd binding, datamatch
            if value in bound:
                os.eventfd_write(bound[value], 1)
                return
        self.transport.write(offset, struct.pack("<I", value & 0xFFFFFFFF))

    def read_reg(self, offset: int) -> int:
        assert self.transport is not None
        return int(struct.unpack("<I", self.transport.read(offset, 4))[0])

    @rule(data=st.data(), count=st.integers(1, 4))
    def registers(self, data: st.DataObject, count: int) -> None:
        """Any 32-bit stores and loads in the register window (Status included: resets and
        invalid steps), config space loads and stores of any width."""
        assert self.transport is not None
        for _ in range(count):
            action = data.draw(st.sampled_from(["write", "write", "read", "config"]))
            if action == "write":
                offset = data.draw(st.one_of(st.sampled_from(REGISTERS),
                                             st.integers(0, 0xFF).map(lambda n: n & ~3)))
                self.write_reg(offset, data.draw(register_values))
            elif action == "read":
                offset = data.draw(st.one_of(st.sampled_from(REGISTERS), st.integers(0, 0x1FF)))
                size = data.draw(st.sampled_from([1, 2, 4, 8]))
                assert len(self.transport.read(offset, size)) == size
            else:
                offset = data.draw(st.integers(0, 0x40))
                self.transport.write(c.CONFIG + offset, data.draw(st.binary(min_size=1,
                                                                            max_size=8)))

    @rule(mask=st.one_of(st.just(2**64 - 1), st.integers(0, 2**64 - 1)),
          extra=st.sampled_from([0] * 7 + [1 << 3, 1 << 40, 2**64 - 1]),
          event_idx=st.booleans(),
          sizes=st.lists(queue_sizes, min_size=3, max_size=3), data=st.data())
    def initialise(self, mask: int, extra: int, event_idx: bool, sizes: list[int],
                   data: st.DataObject) -> None:
        """§3.1.1 from reset to DRIVER_OK: the offered features (a subset, or some never
        offered), every queue (or some) at this driver's ring areas, sizes mostly valid;
        then, usually, the device loop runs and the device starts."""
        assert self.device is not None
        self.write_reg(c.STATUS, 0)
        self.write_reg(c.STATUS, ACK)
        self.write_reg(c.STATUS, ACK | DRV)
        features = (self.device.avail_features & mask) | extra | (1 << c.F_VERSION_1)
        if not event_idx:
            features &= ~(1 << c.F_EVENT_IDX)
        for sel in (0, 1):
            self.write_reg(c.DRIVER_FEATURES_SEL, sel)
            self.write_reg(c.DRIVER_FEATURES, features >> (32 * sel))
        self.write_reg(c.STATUS, ACK | DRV | FOK)
        self.sizes = [0] * len(self.sizes)
        count = data.draw(st.sampled_from([len(self.sizes)] * 3 + list(range(len(self.sizes)))),
                          label="queues set up")
        for index in range(count):
            self.setup_queue(index, sizes[index])
        self.write_reg(c.STATUS, ACK | DRV | FOK | DOK)
        if data.draw(st.sampled_from([True] * 7 + [False]), label="loop runs"):
            self.loop.run_once(0)

    def setup_queue(self, index: int, size: int) -> None:
        """A queue of ``size`` entries at this driver's ring area for ``index``."""
        desc = RING_AREA * (index + 1)
        avail = desc + 16 * max(size, 1)
        used = (avail + 6 + 2 * max(size, 1) + 3) & ~3
        self.memory.write(desc, bytes(RING_AREA))
        self.write_reg(c.QUEUE_SEL, index)
        self.write_reg(c.QUEUE_NUM, size)
        for low, addr in ((c.QUEUE_DESC_LOW, desc), (c.QUEUE_DRIVER_LOW, avail),
                          (c.QUEUE_DEVICE_LOW, used)):
            self.write_reg(low, addr)
            self.write_reg(low + 4, 0)
        self.write_reg(c.QUEUE_READY, 1)
        if index < len(self.sizes):
            self.sizes[index] = size
            self.avail[index] = 0

    # -- the rings (guest memory) ------------------------------------------------------------

    def queue_layout(self, index: int) -> tuple[int, int, int]:
        """(descriptor table, avail ring, size) of queue ``index`` as this driver set it."""
        size = max(self.sizes[index], 1)
        desc = RING_AREA * (index + 1)
        return desc, desc + 16 * size, size

    def publish(self, index: int, head: int) -> None:
        """Put ``head`` in queue ``index``'s avail ring and advance avail->idx."""
        _desc, avail, size = self.queue_layout(index)
        self.memory.write_u16(avail + 4 + 2 * (self.avail[index] % size), head & 0xFFFF)
        self.avail[index] = (self.avail[index] + 1) & 0xFFFF
        self.memory.write_u16(avail + 2, self.avail[index])

    def data_buffer(self, length: int) -> int:
        """A buffer in the data area (reused round robin: the guest may reuse memory)."""
        length = min(length, RAM - DATA)
        if self.next_data + length > RAM:
            self.next_data = DATA
        addr = self.next_data
        self.next_data = (addr + length + 15) & ~15
        return addr

    def ready_queues(self) -> list[int]:
        """Queues this driver set up with a usable size."""
        return [i for i, size in enumerate(self.sizes) if size in (1, 2, 4, 8, 16)]

    @precondition(lambda self: self.device is not None and self.ready_queues())
    @rule(data=st.data(), count=st.integers(1, 6), turns=st.integers(0, 3))
    def post_requests(self, data: st.DataObject, count: int, turns: int) -> None:
        """Well-formed requests of the device's kind on one queue, direct or through an
        indirect table, usually kicked; then the device loop runs ``turns`` times."""
        index = data.draw(st.sampled_from(self.ready_queues()), label="queue")
        desc, _avail, size = self.queue_layout(index)
        for _ in range(count):
            entries = []
            for content, length, writable in self.request(data, index):
                addr = self.data_buffer(length)
                self.memory.write(addr, content[:length])
                entries.append((addr, length, DESC_F_WRITE if writable else 0))
            start = data.draw(st.integers(0, size - 1), label="head")
            if data.draw(st.booleans(), label="indirect"):
                table = self.data_buffer(16 * len(entries))
                self.write_table(table, entries, 0, len(entries))
                self.memory.write(desc + 16 * start, DESC.pack(table, 16 * len(entries),
                                                                DESC_F_INDIRECT, 0))
            else:
                self.write_table(desc, entries, start, size)
            self.publish(index, start)
        if data.draw(st.sampled_from([True, True, True, False]), label="kick"):
            self.write_reg(c.QUEUE_NOTIFY, index)
        if data.draw(st.sampled_from([False] * 5 + [True]), label="reset mid-I/O"):
            self.run_loop(data.draw(st.integers(0, 1)))
            self.write_reg(c.STATUS, 0)
        self.run_loop(turns)

    def write_table(self, table: int, entries: list[tuple[int, int, int]], start: int,
                    size: int) -> None:
        """Descriptors for ``entries`` chained from slot ``start`` (wrapping at ``size``)."""
        for n, (addr, length, flags) in enumerate(entries):
            slot = (start + n) % size
            last = n == len(entries) - 1
            nxt = (start + n + 1) % size
            self.memory.write(table + 16 * slot,
                              DESC.pack(addr, length, flags | (0 if last else DESC_F_NEXT),
                                        0 if last else nxt))

    @precondition(lambda self: self.device is not None and self.ready_queues())
    @rule(data=st.data(), table=st.lists(descriptors, min_size=1, max_size=8),
          indirect=st.lists(descriptors, max_size=6))
    def post_random(self, data: st.DataObject, table: list[tuple[int, int, int, int]],
                    indirect: list[tuple[int, int, int, int]]) -> None:
        """Random descriptors (any address, length, flags, next) and heads (rarely one past
        the queue size, which breaks the ring), kicked."""
        index = data.draw(st.sampled_from(self.ready_queues()), label="queue")
        desc, _avail, size = self.queue_layout(index)
        heads = data.draw(st.lists(st.one_of(*[st.integers(0, size - 1)] * 7,
                                             st.integers(0, 0xFFFF)), min_size=1, max_size=4),
                          label="heads")
        start = data.draw(st.integers(0, size - 1), label="first slot")
        for n, (addr, length, flags, nxt) in enumerate(table):
            self.memory.write(desc + 16 * ((start + n) % size),
                              DESC.pack(addr % 2**64, length, flags, nxt))
        if indirect:
            where = self.data_buffer(16 * len(indirect))
            for n, (addr, length, flags, nxt) in enumerate(indirect):
                self.memory.write(where + 16 * n, DESC.pack(addr % 2**64, length, flags, nxt))
        for head in heads:
            self.publish(index, head)
        self.write_reg(c.QUEUE_NOTIFY, index)

    @precondition(lambda self: self.device is not None and self.ready_queues())
    @rule(data=st.data(), value=st.integers(0, 0xFFFF), addr=st.integers(0, RAM - 1),
          junk=st.binary(min_size=1, max_size=64))
    def corrupt(self, data: st.DataObject, value: int, addr: int, junk: bytes) -> None:
        """avail->idx set to anything (§2.7.13.3: it may only move forward, by at most the
        queue size), or anything written anywhere in RAM (rings included); then a kick."""
        index = data.draw(st.sampled_from(self.ready_queues()), label="queue")
        if data.draw(st.booleans(), label="avail idx"):
            _desc, avail, size = self.queue_layout(index)
            ahead = data.draw(st.integers(0, size), label="stale entries")
            value = data.draw(st.sampled_from([(self.avail[index] + ahead) & 0xFFFF] * 3
                                              + [value]), label="avail idx")
            self.avail[index] = value
            self.memory.write_u16(avail + 2, value)
        else:
            self.memory.write(addr, junk[: RAM - addr])
        self.write_reg(c.QUEUE_NOTIFY, index)

    # -- the device's loop ----------------------------------------------------------------

    @precondition(lambda self: self.transport is not None)
    @rule(turns=st.integers(1, 4))
    def run_loop(self, turns: int = 1) -> None:
        """The device's loop runs; with DRIVER_OK clear it must not write guest RAM."""
        assert self.transport is not None
        quiet = not self.transport.status & DOK
        before = bytes(self.buffer[:RAM]) if quiet else b""
        for _ in range(turns):
            self.loop.run_once(0)
        if quiet and not self.transport.status & DOK:
            assert bytes(self.buffer[:RAM]) == before, "the device wrote guest RAM after reset"

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def canary_intact(self) -> None:
        """Nothing past guest RAM was written."""
        assert bytes(self.buffer[RAM:]) == CANARY, "a device wrote outside guest RAM"

    @invariant()
    def nothing_reached_the_loop(self) -> None:
        """No exception escaped to the event loop, no device stopped by an internal error."""
        assert not self.errors.records, self.errors.records[:3]
        if self.device is not None:
            assert self.device.counters["internal_errors"] == 0

    @precondition(lambda self: self.device is not None)
    @invariant()
    def host_memory_bounded(self) -> None:
        """The device's own buffers and its loop's queues stay bounded."""
        assert self.host_bytes() <= self.HOST_BYTES_MAX, self.host_bytes()
        assert self.loop.pending_calls() <= LOOP_BACKLOG, self.loop.pending_calls()
        live_timers = self.loop.pending_timers()
        assert len(live_timers) <= LOOP_BACKLOG, len(live_timers)

    @precondition(lambda self: self.device is not None)
    @invariant()
    def every_chain_comes_back(self) -> None:
        """Chains taken = chains returned + chains held on purpose, while the device serves
        its rings.  A device that stopped did so with DEVICE_NEEDS_RESET (§2.1.2: it broke
        the ring protocol or lost track of a request) or because the driver reset it; it
        then touches its rings no more (checked by ``run_loop``)."""
        assert self.device is not None and self.transport is not None
        if not self.device.active:
            return
        for index, queue in enumerate(self.device.queues):
            if queue is None:
                continue
            taken = queue.last_avail
            accounted = queue.completed + self.held(index)
            assert (taken - accounted) % 0x10000 == 0, (
                f"queue {index}: took {taken} chains, returned {queue.completed},"
                f" holds {self.held(index)}")


def settings_for(machine: type[RuleBasedStateMachine]) -> Any:
    """The machine's TestCase (what pytest runs) with the shared settings."""
    case = machine.TestCase
    case.settings = stateful_settings
    case.__doc__ = machine.__doc__
    return case

"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), for one device.

Registers are accessed from vCPU threads (under ``self._lock``); the device
runs on its own loop.  On DRIVER_OK the transport registers one ioeventfd per
ready queue (a write of the queue index to QueueNotify then signals the
eventfd inside KVM, with no exit to userspace) and hands the queues to the
device on its loop; interrupts leave through ``Interrupt.trigger`` (the machine
passes an irqfd line, tests a plain callable).

Guest mistakes (bad register access, impossible status transition, feature
set we never offered, bad queue addresses) are logged once and counted; they
never raise out of the transport.  Neither does a host refusal on the vCPU
thread (no fd left for an ioeventfd, KVM out of ioeventfd slots): the device
gets DEVICE_NEEDS_RESET (§2.1.2) and the VM runs on.

Reset ordering (§2.4): the transport's own registers are reset at once, under
its lock, so Status reads 0 right after the driver wrote it (Linux's
virtio-mmio driver does not wait for that: it reads Status and ORs in
ACKNOWLEDGE straight away).  The device model is reset on its own loop, and
everything the transport hands that loop (activation with the accepted
features, notifies) goes through the same FIFO, so a reset queued there always
runs before a renegotiation that followed it; work queued before a reset is
dropped, the device stops touching the rings at its next chain
(``VirtioDevice.quiesce``), and activation runs under the transport's lock so
no reset slips in between.  QEMU resets synchronously under its global lock;
a loop-ordered reset gives the same guarantees without holding vCPUs.  At most
one callback of each kind (reset, activation, notifies) waits on the loop, so
a guest writing registers in a tight loop cannot grow the loop's queue.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from stratovmm.devices.logonce import LogOnce
from stratovmm.errors import HostError
from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.kvm.fds import VmFd
from stratovmm.kvm.registers import RegisterCells
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio import constants as c
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.kicks import serve_kicks_in_c
from stratovmm.virtio.queue import QueueConfig, SplitQueue

log = logging.getLogger(__name__)

_U32 = struct.Struct("<I")

# §3.1.1 driver initialisation: each step adds one bit; FAILED may be set at any time
ACK, DRV, FOK, DOK = (c.STATUS_ACKNOWLEDGE, c.STATUS_DRIVER, c.STATUS_FEATURES_OK,
                      c.STATUS_DRIVER_OK)
VALID_TRANSITIONS: dict[int, frozenset[int]] = {
    0: frozenset({ACK}),
    ACK: frozenset({ACK | DRV}),
    ACK | DRV: frozenset({ACK | DRV | FOK}),
    ACK | DRV | FOK: frozenset({ACK | DRV | FOK | DOK}),
}


class Interrupt(Protocol):
    """The window's interrupt line: one edge per ``trigger`` (any thread).  The machine's
    irqfd line (``stratovmm.machine.irq.IrqLine``) is one."""

    def trigger(self) -> None: ...


class VirtioMmioTransport:
    """One virtio-mmio window (4 KiB) bound to a ``VirtioDevice``."""

    def __init__(self, device: VirtioDevice, vm: VmFd | None, memory: GuestMemoryProtocol,
                 base: int, irq: Interrupt | Callable[[], None], loop: EventLoop) -> None:
        self.device = device
        self.base = base
        self._vm = vm
        self._memory = memory
        self._trigger = irq if callable(irq) else irq.trigger
        fd = getattr(irq, "fd", None)      # an irqfd line: C may raise it too (kicks in C)
        self._irqfd: int | None = fd if isinstance(fd, int) else None
        self._loop = loop
        # reentrant: the device is activated under it, and may interrupt from inside
        self._lock = threading.RLock()
        self.status = 0
        # the registers a vCPU's C run loop answers too (InterruptStatus/ACK on every
        # interrupt): they live where C reads them (ExitWindows, via register_cells)
        self._registers = RegisterCells(c.MMIO_MAGIC, c.MMIO_VERSION, device.DEVICE_TYPE,
                                        c.VENDOR)
        self.config_generation = 0
        self._device_features_sel = 0
        self._driver_features_sel = 0
        self._driver_features = 0
        self._queue_sel = 0
        self._queues = [QueueConfig(size) for size in device.QUEUE_SIZES]
        self._eventfds: list[tuple[int, int]] = []     # (queue index, eventfd)
        self._epoch = 0                                # resets so far: stale loop work is dropped
        # work for the device loop, one callback of each kind queued at most (a guest
        # writing registers in a loop cannot grow the loop's queue): eventfds the loop
        # watches and must close, the activation waiting for the loop, notified queues
        self._on_loop_fds: set[int] = set()
        self._graveyard: list[int] = []
        self._reset_queued = False
        self._activation: _Activation | None = None
        self._activation_queued = False
        self._kicks: set[int] = set()
        self._kicks_queued = False
        self.faults = 0
        self._log_once = LogOnce(log)

    # -- interrupts (any thread) ---------------------------------------------------------------

    @property
    def interrupt_status(self) -> int:
        """InterruptStatus (§4.2.2): the bits raised and not yet acknowledged."""
        return self._registers.interrupt_status

    @interrupt_status.setter
    def interrupt_status(self, value: int) -> None:
        self._registers.interrupt_status = value

    def register_cells(self) -> RegisterCells:
        """The registers the vCPUs' C run loop may answer for this window (the bus hands
        them to ``ExitWindows``): the same values this transport reads and writes."""
        return self._registers

    def signal_used(self) -> None:
        """Used-buffer notification (§4.2.3.4)."""
        self._registers.raise_bits(c.INT_USED_RING)
        self._trigger()

    def signal_config(self) -> None:
        """Configuration-change notification; bumps ConfigGeneration (§4.2.3.3)."""
        with self._lock:
            self._registers.raise_bits(c.INT_CONFIG)
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        self._trigger()

    def needs_reset(self) -> None:
        """The device can no longer work with this driver state (§2.1.2)."""
        with self._lock:
            self.status |= c.STATUS_DEVICE_NEEDS_RESET
        self.signal_config()

    # -- guest register access (vCPU threads) -----------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        """A driver load from the window."""
        if offset >= c.CONFIG:
            return self.device.read_config(offset - c.CONFIG, size)
        if size != 4 or offset % 4:
            self._fault("access", f"{size}-byte read at {offset:#x} (§4.2.2.2: 32-bit only)")
            return bytes(size)
        with self._lock:
            return _U32.pack(self._read_register(offset) & 0xFFFFFFFF)

    def write(self, offset: int, data: bytes) -> None:
        """A driver store to the window."""
        if offset >= c.CONFIG:
            if self.status & c.STATUS_DRIVER_OK or self.status & c.STATUS_DRIVER:
                self.device.write_config(offset - c.CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            self._fault("access", f"{len(data)}-byte write at {offset:#x} (§4.2.2.2: 32-bit only)")
            return
        value = _U32.unpack(data)[0]
        with self._lock:
            work = self._write_register(offset, value)
        if work is not None:
            work()

    def _read_register(self, offset: int) -> int:
        if offset == c.MAGIC_VALUE:
            return c.MMIO_MAGIC
        if offset == c.VERSION:
            return c.MMIO_VERSION
        if offset == c.DEVICE_ID:
            return self.device.DEVICE_TYPE
        if offset == c.VENDOR_ID:
            return c.VENDOR
        if offset == c.DEVICE_FEATURES:
            return (self.device.avail_features >> (32 * self._device_features_sel)
                    if self._device_features_sel < 2 else 0)
        if offset == c.QUEUE_NUM_MAX:
            queue = self._selected_queue()
            return queue.max_size if queue else 0
        if offset == c.QUEUE_READY:
            queue = self._selected_queue()
            return int(queue.ready) if queue else 0
        if offset == c.INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == c.STATUS:
            return self.status
        if offset == c.CONFIG_GENERATION:
            return self.config_generation
        if offset in (c.SHM_LEN_LOW, c.SHM_LEN_HIGH, c.SHM_BASE_LOW, c.SHM_BASE_HIGH):
            return 0xFFFFFFFF        # no shared memory region (§4.2.2: length -1)
        self._fault("register", f"read of write-only or unknown register {offset:#x}")
        return 0

    def _selected_queue(self) -> QueueConfig | None:
        sel = self._queue_sel
        return self._queues[sel] if sel < len(self._queues) else None

    def _write_register(self, offset: int, value: int) -> Callable[[], None] | None:
        """Apply a register write; returns work to do outside the lock, if any."""
        if offset == c.DEVICE_FEATURES_SEL:
            self._device_features_sel = value
        elif offset == c.DRIVER_FEATURES_SEL:
            self._driver_features_sel = value
        elif offset == c.DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == c.QUEUE_SEL:
            self._queue_sel = value
        elif offset == c.QUEUE_NOTIFY:
            return self._notify_without_ioeventfd(value)
        elif offset == c.INTERRUPT_ACK:
            self._registers.acknowledge(value)
        elif offset == c.STATUS:
            return self._write_status(value)
        elif offset in _QUEUE_REGISTERS:
            self._write_queue_register(offset, value)
        elif offset == c.SHM_SEL:
            pass
        else:
            self._fault("register", f"write of read-only or unknown register {offset:#x}")
        return None

    def _write_driver_features(self, value: int) -> None:
        # §3.1.1: features are written after DRIVER and before FEATURES_OK
        if not self.status & c.STATUS_DRIVER or self.status & c.STATUS_FEATURES_OK:
            self._fault("features", "DriverFeatures written outside feature negotiation")
            return
        if self._driver_features_sel > 1:
            return
        shift = 32 * self._driver_features_sel
        self._driver_features = (self._driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)

    def _write_queue_register(self, offset: int, value: int) -> None:
        queue = self._selected_queue()
        if queue is None:
            self._fault("queue", f"queue register {offset:#x} for absent queue {self._queue_sel}")
            return
        if queue.ready or self.status & c.STATUS_DRIVER_OK:
            self._fault("queue", f"queue {self._queue_sel} reconfigured while ready (§4.2.2.3)")
            return
        if offset == c.QUEUE_NUM:
            queue.size = value
        elif offset == c.QUEUE_READY:
            if value == 1:
                problem = queue.check(self._memory)
                if problem is not None:
                    self._fault("queue", f"queue {self._queue_sel}: {problem}")
                    self.status |= c.STATUS_DEVICE_NEEDS_RESET
                    return
            queue.ready = value == 1
        else:
            attr, high = _QUEUE_REGISTERS[offset]
            old = getattr(queue, attr)
            new = (old & 0xFFFFFFFF) | (value << 32) if high else (old & ~0xFFFFFFFF) | value
            setattr(queue, attr, new)

    def _write_status(self, value: int) -> Callable[[], None] | None:
        if value == 0:
            return self._reset()
        old = self.status & ~c.STATUS_DEVICE_NEEDS_RESET
        new = value & ~c.STATUS_DEVICE_NEEDS_RESET
        if new == old:
            return None
        if new & c.STATUS_FAILED:
            self.status |= c.STATUS_FAILED       # the driver gave up on the device
            return None
        if new not in VALID_TRANSITIONS.get(old, frozenset()):
            self._fault("status", f"status {old:#x} -> {new:#x} is not a valid step (§3.1.1)")
            return None
        if new & c.STATUS_FEATURES_OK and not old & c.STATUS_FEATURES_OK:
            problem = self._check_features()
            if problem is not None:
                self._fault("features", problem)
                return None                   # FEATURES_OK stays clear (§3.1.1 step 6)
        self.status = new | (self.status & c.STATUS_DEVICE_NEEDS_RESET)
        if new & c.STATUS_DRIVER_OK and not old & c.STATUS_DRIVER_OK:
            return self._activate()
        return None

    def _check_features(self) -> str | None:
        offered = self.device.avail_features
        extra = self._driver_features & ~offered
        if extra:
            return f"driver accepted features {extra:#x} that were never offered (§2.2.1)"
        if not self._driver_features & (1 << c.F_VERSION_1):
            return "driver did not accept VIRTIO_F_VERSION_1 (legacy drivers unsupported)"
        return None

    # -- activation and reset ----------------------------------------------------------------------

    def _activate(self) -> Callable[[], None] | None:
        """DRIVER_OK: an ioeventfd per ready queue, then the device starts on its loop with
        the features accepted at FEATURES_OK."""
        event_idx = bool(self._driver_features & (1 << c.F_EVENT_IDX))
        queues: list[SplitQueue | None] = [
            SplitQueue.from_config(self._memory, q, event_idx) if q.ready else None
            for q in self._queues
        ]
        try:
            self._eventfds = self._make_ioeventfds(queues)
        except (OSError, HostError) as exc:
            return self._activation_failed(f"cannot make its ioeventfds: {exc}")
        self._activation = _Activation(self._epoch, queues, self._driver_features,
                                       list(self._eventfds))
        if self._activation_queued:
            return None
        self._activation_queued = True
        return lambda: self._loop.call_soon(self._activate_on_loop)

    def _activate_on_loop(self) -> None:
        """Start the device, unless the driver reset it since DRIVER_OK.  Under the lock,
        so a reset cannot slip in between the check and the device's first ring access."""
        with self._lock:
            self._activation_queued = False
            act, self._activation = self._activation, None
            if act is None or act.epoch != self._epoch:
                return
            try:
                for index, efd in act.eventfds:
                    self._loop.register(efd, EPOLLIN, self._kick_handler(index, efd))
                    self._on_loop_fds.add(efd)
            except OSError as exc:
                for _index, efd in act.eventfds:
                    if efd in self._on_loop_fds:
                        self._on_loop_fds.discard(efd)
                        self._loop.unregister(efd)
                self._activation_failed(f"cannot watch its ioeventfds: {exc}")()
                return
            self.device.acked_features = act.features
            self.device.fast_queues = serve_kicks_in_c(
                self._loop, self.device, act.queues, act.eventfds,
                self._registers.interrupt_status_address(), self._irqfd)
            try:
                self.device.activate(self._memory, act.queues, self, self._loop)
            except Exception as exc:     # e.g. a vhost backend refusing the rings
                log.debug("%s: activation failed", self.device.id, exc_info=True)
                self.device.active = False
                self._activation_failed(f"cannot start: {exc!r}")()

    def _make_ioeventfds(self, queues: list[SplitQueue | None]) -> list[tuple[int, int]]:
        """One eventfd per ready queue, bound to QueueNotify with its index; on failure
        nothing is left behind."""
        made: list[tuple[int, int]] = []
        try:
            for index, queue in enumerate(queues):
                if queue is None:
                    continue
                efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                try:
                    if self._vm is not None:
                        self._vm.register_ioeventfd(efd, self.base + c.QUEUE_NOTIFY, 4,
                                                    datamatch=index)
                except BaseException:
                    os.close(efd)
                    raise
                made.append((index, efd))
        except BaseException:
            self._unbind(made)
            for _index, efd in made:
                os.close(efd)
            raise
        return made

    def _unbind(self, eventfds: list[tuple[int, int]]) -> None:
        """Take ``eventfds`` off QueueNotify in KVM (the fds stay open); a failure is counted
        and logged once, never raised to the vCPU."""
        if self._vm is None:
            return
        for index, efd in eventfds:
            try:
                self._vm.unregister_ioeventfd(efd, self.base + c.QUEUE_NOTIFY, 4,
                                              datamatch=index)
            except (OSError, HostError) as exc:
                self._host_failure("ioeventfd", f"cannot unbind an ioeventfd: {exc}")

    def _activation_failed(self, why: str) -> Callable[[], None]:
        """The device cannot start: count it, say so once, and ask the driver for a reset
        (§2.1.2 DEVICE_NEEDS_RESET) instead of failing the vCPU (the VM runs on)."""
        self._host_failure("activate", why)
        return self.needs_reset

    def _host_failure(self, kind: str, message: str) -> None:
        self.device.counters["errors"] += 1
        self._log_once("host-" + kind, logging.ERROR, "%s: %s; the device needs a reset"
                       " (logged once; counted in errors)", self.device.id, message)

    def _kick_handler(self, index: int, efd: int) -> Callable[[int], None]:
        def handler(_events: int) -> None:
            try:
                os.eventfd_read(efd)
            except BlockingIOError:
                return
            self.device.process_queue(index)
        return handler

    def _notify_without_ioeventfd(self, value: int) -> Callable[[], None] | None:
        """A QueueNotify that KVM did not catch: before DRIVER_OK, a bad queue index, or no
        ioeventfds (tests)."""
        if not self.status & c.STATUS_DRIVER_OK:
            return None
        if value >= len(self._queues) or not self._queues[value].ready:
            self._fault("notify", f"notify for absent queue {value}")
            return None
        self._kicks.add(value)
        if self._kicks_queued:
            return None
        self._kicks_queued = True
        return lambda: self._loop.call_soon(self._kick_on_loop)

    def _kick_on_loop(self) -> None:
        with self._lock:
            kicks, self._kicks = sorted(self._kicks), set()
            self._kicks_queued = False
        for index in kicks:
            self.device.process_queue(index)

    def _reset(self) -> Callable[[], None] | None:
        """§2.1.1 / §4.2.2.1: writing 0 to Status resets the device.  The transport at once
        (Status reads 0 from now on, no kick of the old rings gets through), the device
        model on its loop, after whatever was queued there, which is dropped as stale."""
        self.status = 0
        self.interrupt_status = 0
        self._driver_features = 0
        self._device_features_sel = self._driver_features_sel = self._queue_sel = 0
        for queue in self._queues:
            queue.reset()
        self._epoch += 1
        self.device.quiesce()
        self._activation = None
        self._kicks.clear()
        eventfds, self._eventfds = self._eventfds, []
        self._unbind(eventfds)
        for _index, efd in eventfds:
            if efd in self._on_loop_fds:
                self._graveyard.append(efd)      # the loop watches it: closed there
            else:
                os.close(efd)                    # its activation never ran
        if self._reset_queued:
            return None
        self._reset_queued = True
        return lambda: self._loop.call_soon(self._reset_on_loop)

    def _reset_on_loop(self) -> None:
        with self._lock:
            self._reset_queued = False
            graveyard, self._graveyard = self._graveyard, []
            self._on_loop_fds.difference_update(graveyard)
        for efd in graveyard:
            self._loop.unregister(efd)
            os.close(efd)
        self.device.reset()

    def close(self) -> None:
        """Release the ioeventfds (the VM is ending)."""
        self._unbind(self._eventfds)
        for efd in [efd for _index, efd in self._eventfds] + self._graveyard:
            self._loop.unregister(efd)
            os.close(efd)
        self._eventfds, self._graveyard = [], []
        self._on_loop_fds.clear()

    def _fault(self, kind: str, message: str) -> None:
        self.faults += 1
        self.device.counters["guest_faults"] += 1
        self._log_once(kind, logging.WARNING, "%s: bad driver access (%s): %s (logged once;"
                       " counted after)", self.device.id, kind, message)


_QUEUE_REGISTERS: dict[int, tuple[str, bool]] = {
    c.QUEUE_NUM: ("size", False),
    c.QUEUE_READY: ("ready", False),
    c.QUEUE_DESC_LOW: ("desc_table", False), c.QUEUE_DESC_HIGH: ("desc_table", True),
    c.QUEUE_DRIVER_LOW: ("avail_ring", False), c.QUEUE_DRIVER_HIGH: ("avail_ring", True),
    c.QUEUE_DEVICE_LOW: ("used_ring", False), c.QUEUE_DEVICE_HIGH: ("used_ring", True),
}


@dataclass(frozen=True)
class _Activation:
    """A DRIVER_OK waiting for the device loop: valid only in the epoch it was made in."""

    epoch: int
    queues: list[SplitQueue | None]
    features: int
    eventfds: list[tuple[int, int]]

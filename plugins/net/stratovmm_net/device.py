"""virtio-net (virtio 1.2 §5.1) on a tap: one receive and one transmit queue.

Frames carry the 12-byte ``virtio_net_hdr`` of VIRTIO_F_VERSION_1 (§5.1.6), and
the tap is opened with the same header size (see ``tap.py``), so frames move
between the tap and guest RAM with ``os.writev``/``os.readv`` on memoryviews of
the guest's buffers: no copy in the common case.

Transmit (§5.1.6.2): each chain is one header + frame; the header is checked
against the features the driver accepted, the frame size bounded, and the
chain written to the tap as it is.  Malformed or oversized chains are dropped
and counted; a tap that cannot take a frame right now drops it, as a NIC would.

Receive (§5.1.6.3, §5.1.6.4): the tap fd is registered on the device's loop
(``EPOLLIN``) only while the driver has receive buffers for it, so an idle or
starved device costs nothing.  Both queues are served by the core's ``serve``
(a budget of frames per loop turn); receive in its ``Frames`` form, because
with VIRTIO_NET_F_MRG_RXBUF a frame may fill several chains.  Each frame is read
with one ``readv`` into the next chain plus a host overflow buffer behind it;
a frame larger than that chain spills: with MRG_RXBUF its tail is copied into
the chains that follow (``_Spill``; tap reads pause until the driver has posted
enough of them), without it the frame is dropped (§5.1.6.3.1).

Transmitted and received frames move in C (``stratovmm_net.native``) under the core's
serving loop, with the same checks; whatever the C handlers are not sure of comes
back to the Python handlers here.  A frame C read that spills is handed over with
its tail, and placed here.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from stratovmm.api import (
    ID_NET,
    ConfigError,
    DescriptorChain,
    EventLoop,
    Frames,
    HeldChains,
    NativeHandler,
    SplitQueue,
    VirtioDevice,
)
from stratovmm_net.native import NativeNet
from stratovmm_net.tap import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_UFO,
    VNET_HDR_LEN,
    Tap,
)

log = logging.getLogger(__name__)

RX, TX = 0, 1
QUEUE_SIZE = 256

# §5.1.3 feature bits
F_CSUM, F_GUEST_CSUM, F_MAC = 0, 1, 5
F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN, F_GUEST_UFO = 7, 8, 9, 10
F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN, F_HOST_UFO = 11, 12, 13, 14
F_MRG_RXBUF, F_STATUS = 15, 16

# §5.1.4 status; §5.1.6 header flags and GSO types
S_LINK_UP = 1
HDR_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80

HDR = struct.Struct("<BBHHHHH")   # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
#                                   num_buffers (VERSION_1: always present, §5.1.6)
NUM_BUFFERS = struct.Struct("<H")
NUM_BUFFERS_OFFSET = 10
CONFIG = struct.Struct("<6sHH")   # §5.1.4: mac, status, max_virtqueue_pairs
ETH_HLEN = 14
MAX_FRAME = 65550                 # Ethernet frame after the header (64 KiB GSO + headers),
MAX_PACKET = VNET_HDR_LEN + MAX_FRAME   # the same bound as Firecracker's 65562-byte buffer


# TUNSETOFFLOAD bit for each guest receive offload (§5.1.3: GUEST_* = "driver can receive")
_GUEST_OFFLOADS = ((F_GUEST_TSO4, TUN_F_TSO4), (F_GUEST_TSO6, TUN_F_TSO6),
                   (F_GUEST_UFO, TUN_F_UFO))
# What every tap since Linux 2.6.27 accepts: offered by an empty hot-replace slot,
# whose tap is not known when the guest probes it.
PLACEHOLDER_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
# GSO type → the feature the driver needs to send it (§5.1.6.2.1)
_GSO_FEATURE = {GSO_TCPV4: F_HOST_TSO4, GSO_TCPV6: F_HOST_TSO6, GSO_UDP: F_HOST_UFO}


def offered_features(offloads: int) -> int:
    """Feature bits for a tap that accepts the ``TUN_F_*`` ``offloads``.

    Transmit offloads (CSUM, HOST_TSO4/6/ECN) need only the vnet header, which
    every tap here has; HOST_UFO and the receive offloads (GUEST_*) follow what
    TUNSETOFFLOAD accepted when probed, as QEMU decides them.
    """
    bits = ((1 << F_MAC) | (1 << F_STATUS) | (1 << F_MRG_RXBUF) | (1 << F_CSUM)
            | (1 << F_HOST_TSO4) | (1 << F_HOST_TSO6) | (1 << F_HOST_ECN))
    if offloads & TUN_F_UFO:
        bits |= 1 << F_HOST_UFO
    if offloads & TUN_F_CSUM:
        bits |= 1 << F_GUEST_CSUM
        for feature, tun in _GUEST_OFFLOADS:
            if offloads & tun:
                bits |= 1 << feature
        if offloads & TUN_F_TSO_ECN:
            bits |= 1 << F_GUEST_ECN
    return bits


def tap_offloads(acked: int) -> int:
    """The TUNSETOFFLOAD bits for the receive offloads the driver accepted.

    §5.1.3.1: GUEST_TSO4/TSO6/UFO require GUEST_CSUM and GUEST_ECN requires a
    TSO; a driver that acked them alone gets none (the tap would refuse them too).
    """
    if not acked & (1 << F_GUEST_CSUM):
        return 0
    flags = TUN_F_CSUM
    for feature, tun in _GUEST_OFFLOADS:
        if acked & (1 << feature):
            flags |= tun
    if acked & (1 << F_GUEST_ECN) and flags & (TUN_F_TSO4 | TUN_F_TSO6):
        flags |= TUN_F_TSO_ECN
    return flags


# -- MAC addresses ----------------------------------------------------------------------------

_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}")


def parse_mac(text: str, option: str) -> bytes:
    """``52:54:00:12:34:56`` → 6 bytes; a unicast, non-zero address or ``ConfigError``."""
    if not _MAC.fullmatch(text):
        raise ConfigError(f"{option}: {text!r} is not a MAC address (six hex pairs, e.g."
                          " 52:54:00:12:34:56)")
    mac = bytes(int(part, 16) for part in re.split("[:-]", text))
    if mac[0] & 1:
        raise ConfigError(f"{option}: {text} is a multicast address; a NIC needs a unicast one")
    if mac == bytes(6):
        raise ConfigError(f"{option}: 00:00:00:00:00:00 is not a usable MAC address")
    return mac


def generated_mac(seed: str) -> bytes:
    """A locally administered unicast MAC derived from ``seed`` (stable across boots).
    hashlib is imported here, not with the module: it loads OpenSSL's libcrypto (3 MiB of
    RSS), which a VM without a default MAC never needs."""
    import hashlib

    digest = hashlib.sha256(seed.encode()).digest()
    return bytes([(digest[0] & 0xFC) | 0x02]) + digest[1:6]


def format_mac(mac: bytes) -> str:
    """6 bytes → ``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in mac)


# -- receive ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Spill:
    """A frame larger than the held buffers: its first ``len(lengths)`` chains are filled
    (``room`` writable bytes), ``tail`` waits for the buffers the driver posts next."""

    size: int
    tail: memoryview          # (a view: placing a piece takes no copy of the rest)
    lengths: list[int]
    room: int


def _rx_buffer_problem(chain: DescriptorChain) -> str | None:
    """Why ``chain`` cannot take a received frame, or None."""
    if chain.readable or chain.writable_len < VNET_HDR_LEN:
        return (f"receive chain {chain.head} must be device-writable and hold the"
                f" {VNET_HDR_LEN}-byte header (§5.1.6.3.1)")
    return None


class NetDevice(VirtioDevice):
    """A NIC on a tap (or on none: an empty hot-replace slot, link down)."""

    DEVICE_TYPE = ID_NET
    QUEUE_SIZES = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, device_id: str, tap: Tap | None, mac: bytes, loop: EventLoop) -> None:
        super().__init__(device_id)
        self.tap = tap
        self.mac = mac
        self._loop = loop
        # Offered features are fixed for the device's life: the driver reads them once.
        self._features = offered_features(tap.offloads if tap is not None
                                          else PLACEHOLDER_OFFLOADS)
        self._armed = False
        self._tap_broken = False
        self._spill: _Spill | None = None
        overflow = bytearray(MAX_PACKET + 1)
        self._overflow = memoryview(overflow)
        self._frames = Frames(self._receive_frame, wants=self._wants_chain,
                              check=_rx_buffer_problem)
        self._native = NativeNet(overflow)

    # -- features and config space (§5.1.3, §5.1.4) -------------------------------------------

    def device_features(self) -> int:
        """MAC, STATUS, MRG_RXBUF and the offloads the tap can do."""
        return self._features

    def config_space(self) -> bytes:
        """mac, status (LINK_UP while a working tap is attached), max_virtqueue_pairs 1."""
        up = self.tap is not None and not self._tap_broken
        return CONFIG.pack(self.mac, S_LINK_UP if up else 0, 1)

    def stats(self) -> dict[str, int]:
        """The net counters, plus the common names: requests = frames moved, bytes_read =
        bytes read from the tap (to the guest), bytes_written = bytes written to the tap."""
        with self.lock:
            out = super().stats()
        for name in ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets", "tx_bytes",
                     "tx_dropped", "tx_malformed", "tx_oversized"):
            out.setdefault(name, 0)
        out["requests"] = out["rx_packets"] + out["tx_packets"]
        out["bytes_read"] = out["rx_bytes"]
        out["bytes_written"] = out["tx_bytes"]
        return out

    # -- lifecycle (device loop) ----------------------------------------------------------------

    def on_activate(self) -> None:
        """Let the tap hand us the offloaded frames the driver said it can receive."""
        self._apply_offloads()

    def on_reset(self) -> None:
        """Forget a spilled frame and stop reading the tap (§2.1.2: the rings are gone, and
        the core forgets the buffers it held)."""
        self._arm(False)
        self._spill = None
        self._native.drop_spill()

    def close(self) -> None:
        """Detach from the tap."""
        self._arm(False)
        if self.tap is not None:
            self.tap.close()

    def _apply_offloads(self) -> None:
        if self.tap is None or self._tap_broken:
            return
        flags = tap_offloads(self.acked_features) & self.tap.offloads
        try:
            self.tap.set_offload(flags)
        except OSError as exc:
            self.counters["errors"] += 1
            log.error("%s: TUNSETOFFLOAD %#x on tap %s failed: %s", self.id, flags,
                      self.tap.name, exc.strerror)

    # -- hot-replace (main loop) -------------------------------------------------------------------

    def attach_tap(self, tap: Tap, mac: bytes | None = None) -> None:
        """Give an empty slot its tap: link up, announced with a config-change interrupt.

        The driver read the MAC when it probed the slot (Linux reads it only
        then), so a ``mac`` given here reaches config space but not a running driver.
        """
        with self.lock:
            self.stop_native_kicks()     # (C takes the new tap at the loop's next wait)
            self.tap = tap
            self._tap_broken = False
            if mac is not None:
                self.mac = mac
        if self.active:
            self._apply_offloads()
            self.process_queue(RX)
            self.process_queue(TX)
        self._config_changed()

    def detach_tap(self) -> Tap | None:
        """Take the tap away (link down); returns it.  A frame half delivered is dropped (its
        buffers stay held for the next tap's frames)."""
        self._arm(False)
        with self.lock:
            self.stop_native_kicks()     # (none in C with the old tap once this returns)
            old, self.tap = self.tap, None
        self._spill = None
        self._native.drop_spill()
        self._config_changed()
        return old

    def _config_changed(self) -> None:
        """§5.1.4.2: the driver re-reads ``status`` on a configuration change notification."""
        if self.active and self.interrupt is not None:
            self.interrupt.signal_config()

    # -- queues ------------------------------------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """A kick: RX means new receive buffers, TX new frames to send."""
        native = self._native
        native.sync(self.tap.fd if self.tap is not None and self._tap_usable() else None,
                    self.acked_features, self._mergeable)
        try:
            if index == RX:
                self._receive()
            elif index == TX:
                self.serve(TX, self._transmit_chain, native=native.transmit)
        finally:                 # also when the ring broke after C served some
            self.after_native(index)

    def native_kick(self, index: int) -> NativeHandler | None:
        """C may serve kicks (and, for receive, the tap) while the tap works and no frame C
        read waits to be placed by Python (``_Spill``)."""
        native = self._native
        usable = self._tap_usable()
        native.sync(self.tap.fd if self.tap is not None and usable else None,
                    self.acked_features, self._mergeable)
        if not usable:
            return None
        if index == TX:
            return native.transmit
        if index == RX and self._spill is None and not native.spill_size:
            return native.receive
        return None

    def after_native(self, index: int) -> None:
        """What C moved (in the loop's wait, or under ``serve``) into ``counters``; under
        the lock, so that ``stats`` never counts it twice."""
        with self.lock:
            self._native.fold(self.counters)

    def unfolded_counts(self) -> dict[str, int]:
        """What C moved and ``after_native`` has not folded in yet."""
        return self._native.unfolded()

    # -- transmit (§5.1.6.2) -----------------------------------------------------------------------

    def _transmit_chain(self, chain: DescriptorChain) -> int:
        """One frame for the tap; the device writes nothing back (used length 0)."""
        self._transmit(chain)
        return 0

    def _transmit(self, chain: DescriptorChain) -> None:
        """One frame to the tap, or dropped and counted."""
        memory = self.memory
        assert memory is not None
        if chain.writable:
            self._tx_bad("tx-layout", "transmit chain has device-writable buffers (§5.1.6.2)")
            return
        total = chain.readable_len
        if total < VNET_HDR_LEN + ETH_HLEN:
            self._tx_bad("tx-short", f"transmit chain of {total} bytes is shorter than the"
                         f" {VNET_HDR_LEN}-byte header and an Ethernet header (§5.1.6.2)")
            return
        if total > MAX_PACKET:
            self.counters["tx_oversized"] += 1
            self.guest_fault("tx-oversized", f"frame of {total - VNET_HDR_LEN} bytes is larger"
                             f" than {MAX_FRAME}")
            return
        views = chain.read_views(memory)
        header = (HDR.unpack_from(views[0]) if len(views[0]) >= VNET_HDR_LEN
                  else HDR.unpack(chain.read_all(memory, VNET_HDR_LEN)))
        problem = self._check_tx_header(header, total - VNET_HDR_LEN)
        if problem is not None:
            self._tx_bad("tx-header", problem)
            return
        tap = self.tap
        if tap is None or self._tap_broken:
            self.counters["tx_dropped"] += 1
            return
        try:
            os.writev(tap.fd, views)
        except BlockingIOError:
            self.counters["tx_dropped"] += 1       # the tap's queue is full: a NIC drops too
            return
        except OSError as exc:
            self._tx_error(exc)
            return
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += total - VNET_HDR_LEN

    def _check_tx_header(self, header: tuple[int, ...], frame_len: int) -> str | None:
        """Why the driver may not send this header (§5.1.6.2.1), or None."""
        flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset, _num = header
        if flags & ~HDR_F_NEEDS_CSUM:
            return f"flags {flags:#x}: only NEEDS_CSUM may be set on transmit (§5.1.6.2.1)"
        if flags & HDR_F_NEEDS_CSUM:
            if not self.has_feature(F_CSUM):
                return "NEEDS_CSUM without VIRTIO_NET_F_CSUM (§5.1.6.2.1)"
            if csum_start + csum_offset + 2 > frame_len:
                return (f"checksum at {csum_start}+{csum_offset} lies outside the"
                        f" {frame_len}-byte frame (§5.1.6.2)")
        kind = gso_type & ~GSO_ECN
        if kind == GSO_NONE:
            return "ECN bit without a GSO type (§5.1.6.2.1)" if gso_type & GSO_ECN else None
        feature = _GSO_FEATURE.get(kind)
        if feature is None:
            return f"unknown gso_type {gso_type:#x} (§5.1.6)"
        if not self.has_feature(feature):
            return f"gso_type {gso_type:#x} without the matching HOST_* feature (§5.1.6.2.1)"
        if gso_type & GSO_ECN and not self.has_feature(F_HOST_ECN):
            return "GSO with ECN without VIRTIO_NET_F_HOST_ECN (§5.1.6.2.1)"
        if not flags & HDR_F_NEEDS_CSUM or gso_size == 0:
            return "GSO needs NEEDS_CSUM and a non-zero gso_size (§5.1.6.2.1)"
        return None

    def _tx_bad(self, kind: str, message: str) -> None:
        self.counters["tx_malformed"] += 1
        self.guest_fault(kind, message)

    def _tx_error(self, exc: OSError) -> None:
        if exc.errno == errno.EINVAL:      # the tap's own header check refused the frame
            self._tx_bad("tx-refused", "the tap refused the frame's vnet header (EINVAL)")
        elif exc.errno == errno.EIO:       # the tap interface is down: nobody to send to
            self.counters["tx_dropped"] += 1
        else:
            self._tap_failed("write", exc)

    # -- receive (§5.1.6.3, §5.1.6.4) ------------------------------------------------------------

    @property
    def _mergeable(self) -> bool:
        return self.has_feature(F_MRG_RXBUF)

    def _tap_usable(self) -> bool:
        return self.tap is not None and not self._tap_broken

    def _receive(self) -> None:
        """Frames from the tap into receive buffers, a budget per loop turn (``serve``); then
        watch the tap only while buffers wait for a frame — held ones, or the one the C
        handler left in the ring.  A spilled frame waits for buffers instead: those the
        ring has already (served again on a later turn) or the driver's next kick."""
        spilled = self._spill is not None or self._native.spill_size > 0
        if self._tap_usable() or spilled:
            self.serve(RX, self._frames, native=None if spilled else self._native.receive)
        if self.active and (self._spill is not None or self._native.spill_size > 0):
            # a spilled frame waits for the chains after it: there already, or the driver's
            # next kick, asked for here (§2.7.10: a stale avail_event would never bring it)
            queue = self._rx_queue()
            if queue.has_available() or queue.set_notification(True):
                self.serve_later(RX)
        self._arm(self._tap_usable() and self._spill is None
                  and (self.held_chains(RX) > 0 or self._native.waiting))

    def _arm(self, on: bool) -> None:
        """Watch the tap for frames only while they have somewhere to go (no busy polling)."""
        if on == self._armed:
            return
        assert self.tap is not None or not on
        if on:
            assert self.tap is not None
            self.watch_host_fd(RX, self.tap.fd, self._on_tap_readable)
        elif self.tap is not None:
            self._loop.unregister(self.tap.fd)
        self._armed = on

    def _on_tap_readable(self, _events: int) -> None:
        self.process_queue(RX)
        if not self.active:            # the ring broke (needs reset): stop watching
            self._arm(False)

    def _wants_chain(self, held: HeldChains) -> bool:
        """One chain for the next frame; a spilled frame wants room for its tail (or,
        handed over by C, for all of it), up to a whole ring of chains (§5.1.6.4)."""
        spill = self._spill
        if spill is not None:
            return held.room - spill.room < len(spill.tail) and len(held) < self._rx_size()
        handed_over = self._native.spill_size
        if handed_over:
            return held.room < handed_over and len(held) < self._rx_size()
        return not held

    def _rx_queue(self) -> SplitQueue:
        """The receive queue (set up: only called while serving it)."""
        queue = self.queues[RX]
        assert queue is not None
        return queue

    def _rx_size(self) -> int:
        return self._rx_queue().size

    def _receive_frame(self, held: HeldChains) -> Sequence[int] | None:
        """One frame from the tap into the held buffers: the bytes each used chain got
        (§5.1.6.4), none for a dropped frame, None when the tap has none or a spilled frame
        waits for more buffers."""
        if self._spill is None and self._native.spill_size:
            total, read = self._native.take_spill()     # C read it into held[0] and on
            self._spill_over(total, total - read, held[0].writable_len)
        if self._spill is not None:
            return self._place_tail(held)
        if not self._tap_usable():
            return None
        memory = self.memory
        assert memory is not None
        capacity = held[0].writable_len
        iov = held.write_views(memory, 1)
        iov.append(self._overflow[: max(1, MAX_PACKET + 1 - capacity)])
        size = self._read_tap(iov)
        if size is None:
            return None
        if size < VNET_HDR_LEN + ETH_HLEN or size > MAX_PACKET:
            self.counters["rx_dropped"] += 1
            return []
        if size <= capacity:
            return self._frame_done(held, [size], size)
        if not self._mergeable:
            self.counters["rx_dropped"] += 1    # larger than the driver's buffer (§5.1.6.3.1)
            return []
        self._spill_over(size, size - capacity, capacity)
        return self._place_tail(held)

    def _spill_over(self, size: int, tail: int, first: int) -> None:
        """A frame of ``size`` bytes that did not fit its first chain (``first`` writable
        bytes): its last ``tail`` bytes, in the overflow buffer, wait for the chains after
        it, copied out so that the next frame can be read."""
        self._spill = _Spill(size, memoryview(bytes(self._overflow[:tail])), [first], first)

    def _read_tap(self, iov: list[memoryview]) -> int | None:
        """One frame from the tap into ``iov``: its size, or None when there is none."""
        tap = self.tap
        assert tap is not None
        try:
            size = os.readv(tap.fd, iov)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._tap_failed("read", exc)
            return None
        if size == 0:              # a tap never reads 0 bytes: the other side is gone
            self._tap_failed("read", OSError(errno.EPIPE, "end of file"))
            return None
        return size

    def _frame_done(self, held: HeldChains, lengths: list[int], size: int) -> list[int]:
        """Set num_buffers in the first header (§5.1.6.4: the number of chains used; 1
        without MRG_RXBUF); the chains are used together by ``serve``."""
        assert self.memory is not None
        held[0].write_all(self.memory, NUM_BUFFERS.pack(len(lengths)), offset=NUM_BUFFERS_OFFSET)
        self.counters["rx_packets"] += 1
        self.counters["rx_bytes"] += size - VNET_HDR_LEN
        return lengths

    def _place_tail(self, held: HeldChains) -> list[int] | None:
        """Copy the rest of a spilled frame into the chains held after it; None while
        waiting for more."""
        spill = self._spill
        assert spill is not None and self.memory is not None
        for chain in held.after(len(spill.lengths)):
            n = chain.write_all(self.memory, spill.tail)
            spill.tail = spill.tail[n:]
            spill.lengths.append(n)
            spill.room += chain.writable_len
            if not spill.tail:
                self._spill = None
                return self._frame_done(held, spill.lengths, spill.size)
        if len(held) >= self._rx_size() or held.descriptors >= self._rx_size():
            self.counters["rx_dropped"] += 1     # every descriptor is ours: nothing more
            self._spill = None                   # can come, so give up the frame; its
            return []                            # buffers stay held for the next one
        return None

    def _tap_failed(self, what: str, exc: OSError) -> None:
        """The tap is unusable (e.g. its interface was deleted): stop, link down, say so."""
        self.counters["errors"] += 1
        if self._tap_broken:
            return
        log.error("%s: %s on tap %s failed: %s; link down", self.id, what,
                  self.tap.name if self.tap else "?", exc.strerror)
        self._arm(False)
        with self.lock:
            self._tap_broken = True
        self._config_changed()


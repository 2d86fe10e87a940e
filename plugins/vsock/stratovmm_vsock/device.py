"""virtio-vsock (virtio 1.2 §5.10): the rx, tx and event queues over a ``UnixBridge``.

The device checks every header the guest sends before the bridge sees it;
a malformed one is dropped and counted (``guest_faults``), nothing else
changes.  Packets for the guest are produced only when an rx buffer is at
hand: the payload is read from the host socket straight into the guest
buffer, then the header is written in front of it.  One popped rx buffer that
found nothing to carry is held by the core for the next packet rather than
returned empty.  Both queues are served by the core's ``serve``, a budget of
packets per loop turn, so a guest (or a host peer) that never runs dry cannot
hold the loop.
"""

from __future__ import annotations

import logging
import struct

from stratovmm.api import (
    ID_VSOCK,
    STOP,
    DescriptorChain,
    SplitQueue,
    VirtioDevice,
    skip_views,
    trim_views,
)
from stratovmm_vsock.backend import UnixBridge
from stratovmm_vsock.packet import (
    F_STREAM,
    HEADER_SIZE,
    MAX_PAYLOAD,
    OP_NAMES,
    OP_RW,
    Header,
)

log = logging.getLogger(__name__)

RX, TX, EVENT = 0, 1, 2             # §5.10.2
QUEUE_SIZE = 256


class VsockDevice(VirtioDevice):
    """The guest's ``/dev/vsock``: CID ``guest_cid``, streams bridged by ``bridge``."""

    DEVICE_TYPE = ID_VSOCK
    QUEUE_SIZES = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, device_id: str, guest_cid: int, bridge: UnixBridge) -> None:
        super().__init__(device_id)
        self.guest_cid = guest_cid
        self.bridge = bridge
        self._tx_blocked = False
        bridge.attach(self)

    def device_features(self) -> int:
        """Stream sockets only (§5.10.3; Linux 6.1 negotiates nothing and assumes streams)."""
        return 1 << F_STREAM

    def config_space(self) -> bytes:
        """``struct virtio_vsock_config { le64 guest_cid; }`` (§5.10.4)."""
        return struct.pack("<Q", self.guest_cid)

    # -- queues (device loop) -------------------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """tx: read the guest's packets, then deliver what they caused; rx: deliver.

        The event queue's buffers stay with us: its only event, TRANSPORT_RESET, follows a
        migration, which this VMM does not do (§5.10.6.7)."""
        if index == EVENT:
            return
        if index == TX:
            self._serve_tx()
        self._serve_rx()
        if self._tx_blocked and not self.bridge.rst_backlog_full():
            self.serve_later(TX)          # the rx buffers took RSTs: tx may go on

    def pump_rx(self) -> None:
        """Deliver what the host side produced (bridge callback, same loop)."""
        self.process_queue(RX)

    def _queue(self, index: int) -> SplitQueue | None:
        return self.queues[index] if index < len(self.queues) else None

    def _serve_tx(self) -> None:
        if self._queue(TX) is None:
            return
        self._tx_blocked = False
        self.serve(TX, self._tx_chain, gate=self._tx_gate)

    def _tx_gate(self) -> float | None:
        """§5.10.6.1: tx is processed "so long as there are additional resources available
        to hold packets outside the rx virtqueue"; it resumes once rx takes the RSTs."""
        if self.bridge.rst_backlog_full():
            self._tx_blocked = True
            return STOP
        return None

    def _tx_chain(self, chain: DescriptorChain) -> int:
        """One guest packet; the device writes nothing back (used length 0)."""
        self._tx_packet(chain)
        return 0

    def _tx_packet(self, chain: DescriptorChain) -> None:
        """Check one guest packet (§5.10.6) and hand it to the bridge."""
        assert self.memory is not None
        available = chain.readable_len
        if available < HEADER_SIZE:
            self.guest_fault("header", f"tx buffer of {available} bytes, the header is 44"
                             " (§5.10.6)")
            return
        header = Header.unpack(chain.read_all(self.memory, HEADER_SIZE))
        if header.len > available - HEADER_SIZE or header.len > MAX_PAYLOAD:
            self.guest_fault("header", f"{header.describe()}: len beyond the buffer of"
                             f" {available - HEADER_SIZE} bytes or above {MAX_PAYLOAD}")
            return
        if header.src_cid != self.guest_cid:
            self.guest_fault("header", f"{header.describe()}: src_cid is not the guest_cid"
                             f" {self.guest_cid} (§5.10.6.4: it MUST be)")
            return
        if header.op not in OP_NAMES:
            self.guest_fault("header", f"{header.describe()}: unknown op (§5.10.6)")
            return
        payload: list[memoryview] = []
        if header.op == OP_RW and header.len:
            views = chain.read_views(self.memory)
            payload = trim_views(skip_views(views, HEADER_SIZE), header.len)
            self.counters["bytes_written"] += header.len
        self.counters["requests"] += 1
        self.bridge.on_guest_packet(header, payload)

    def _serve_rx(self) -> None:
        if self._queue(RX) is None:
            return
        self.serve(RX, self._rx_chain, gate=self._rx_gate)

    def _rx_gate(self) -> float | None:
        """Pop rx buffers only while something may be owed to the guest."""
        return None if self.bridge.has_rx() else STOP

    def _rx_chain(self, chain: DescriptorChain) -> int | None:
        """Fill one rx buffer with the next packet; None keeps it when none is ready."""
        assert self.memory is not None
        if chain.readable or chain.writable_len <= HEADER_SIZE:
            # §5.10.6.4: "Virtqueue buffers for incoming packets are write-only"; one that
            # cannot hold a header and a byte of payload would stall the streams.
            self.guest_fault("rx-buffer", f"rx buffer with {chain.readable_len} readable and"
                             f" {chain.writable_len} writable bytes")
            return 0
        views = skip_views(chain.write_views(self.memory), HEADER_SIZE)
        packet = self.bridge.next_rx_packet(views)
        if packet is None:
            return None
        header, length = packet
        chain.write_all(self.memory, header.pack())
        self.counters["rx_packets"] += 1
        self.counters["bytes_read"] += length
        return HEADER_SIZE + length

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_reset(self) -> None:
        """Streams die with the queues; the listening socket stays."""
        self._tx_blocked = False
        self.bridge.reset()

    def close(self) -> None:
        """Close every host socket and remove the listening socket's file."""
        self.bridge.close()

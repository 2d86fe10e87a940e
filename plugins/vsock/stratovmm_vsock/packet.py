"""The virtio-vsock packet header (virtio 1.2 §5.10.6) and its numbers.

Every packet on the rx and tx queues starts with this 44-byte little-endian
header; ``len`` bytes of payload follow it for ``OP_RW``.  Both directions carry
the sender's ``buf_alloc`` and ``fwd_cnt`` so the peer can compute its credit
(§5.10.6.3 Buffer Space Management).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = _HEADER.size          # 44
assert HEADER_SIZE == 44

HOST_CID = 2                        # VMADDR_CID_HOST: the peer every guest packet must address
U32_MASK = 0xFFFF_FFFF

# §5.10.3 feature bits
F_STREAM = 0
F_SEQPACKET = 1

# §5.10.6.2 type
TYPE_STREAM = 1
TYPE_SEQPACKET = 2

# §5.10.6 op
OP_INVALID = 0
OP_REQUEST = 1
OP_RESPONSE = 2
OP_RST = 3
OP_SHUTDOWN = 4
OP_RW = 5
OP_CREDIT_UPDATE = 6
OP_CREDIT_REQUEST = 7
OP_NAMES = {OP_REQUEST: "REQUEST", OP_RESPONSE: "RESPONSE", OP_RST: "RST",
            OP_SHUTDOWN: "SHUTDOWN", OP_RW: "RW", OP_CREDIT_UPDATE: "CREDIT_UPDATE",
            OP_CREDIT_REQUEST: "CREDIT_REQUEST"}

# §5.10.6.5 flags of OP_SHUTDOWN: what the *sender* will no longer do
SHUTDOWN_RCV = 1
SHUTDOWN_SEND = 2
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND

# Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE: no driver sends a bigger payload, so a
# larger ``len`` is a malformed header, not a reason to allocate.
MAX_PAYLOAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Header:
    """One ``struct virtio_vsock_hdr``."""

    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse the first 44 bytes of ``data``."""
        return cls(*_HEADER.unpack_from(data))

    def pack(self) -> bytes:
        """The 44 wire bytes."""
        return _HEADER.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len,
                            self.type, self.op, self.flags, self.buf_alloc & U32_MASK,
                            self.fwd_cnt & U32_MASK)

    def describe(self) -> str:
        """``RW 3:1234 -> 2:5000 len=10`` (for logs)."""
        op = OP_NAMES.get(self.op, f"op{self.op}")
        return (f"{op} {self.src_cid}:{self.src_port} -> {self.dst_cid}:{self.dst_port}"
                f" len={self.len}")


def reply_rst(to: Header) -> Header:
    """The RST answering ``to``: "a VIRTIO_VSOCK_OP_RST reply is sent if a listening socket
    does not exist on the destination" (§5.10.6.5), and for an unknown type (§5.10.6.4)."""
    return Header(to.dst_cid, to.src_cid, to.dst_port, to.src_port, 0, TYPE_STREAM, OP_RST,
                  0, 0, 0)


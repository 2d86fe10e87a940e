"""virtio-blk (virtio 1.2 §5.2): one request queue; read, write, flush, get-id.

A request is a readable 16-byte header (type, reserved, sector), data buffers,
and a writable status byte at the very end (§5.2.6).  Any framing is accepted
(VIRTIO_F_VERSION_1 implies ANY_LAYOUT): the header is the first 16 readable
bytes, the status the last writable byte, the data what lies between.

Every field the guest controls is checked (§5.2.6.1): data length a multiple
of 512, the range inside the capacity, writes refused on a read-only drive,
unknown types answered UNSUPP.  Host I/O errors answer IOERR and are counted,
and logged once per kind (operation and errno): a guest retrying a failing
sector must not fill the log; they do not stop the device.

Reads and writes as Linux frames them run in C (``stratovmm_blk.native``) under the
core's serving loop, with the same checks; whatever the C handler is not sure of comes
back to ``_request`` here.
"""

from __future__ import annotations

import struct

from stratovmm.api import (
    ID_BLOCK,
    DescriptorChain,
    EventLoop,
    GuestMemoryProtocol,
    NativeHandler,
    TokenBucket,
    VirtioDevice,
    skip_views,
    trim_views,
)
from stratovmm_blk.backend import SECTOR, BlockBackend
from stratovmm_blk.native import NativeBlk

QUEUE_SIZE = 256
# §5.2.3 feature bits
F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH = 2, 5, 6, 9
# §5.2.6 request types and status values
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20
_STATUS = tuple(bytes([status]) for status in range(3))
HEADER = struct.Struct("<IIQ")
# §5.2.4 config layout: capacity u64, size_max u32, seg_max u32, geometry u32, blk_size u32
CONFIG = struct.Struct("<QIIIIBBHIBBHIIII")


class BlockDevice(VirtioDevice):
    """A drive: an image file (or none, in an empty hot-replace slot)."""

    DEVICE_TYPE = ID_BLOCK
    QUEUE_SIZES = (QUEUE_SIZE,)

    def __init__(self, device_id: str, backend: BlockBackend | None, serial: str = "",
                 loop: EventLoop | None = None, iops: int | None = None) -> None:
        super().__init__(device_id)
        self.backend = backend
        self.serial = serial.encode()[:ID_BYTES]
        self.loop = loop
        self._bucket = TokenBucket(iops) if iops else None
        self._native = NativeBlk(backend) if backend is not None else None

    # -- features and config (§5.2.3, §5.2.4) ----------------------------------------------

    def device_features(self) -> int:
        """SEG_MAX, BLK_SIZE, FLUSH; RO for a read-only drive."""
        bits = (1 << F_SEG_MAX) | (1 << F_BLK_SIZE) | (1 << F_FLUSH)
        if self.backend is not None and self.backend.read_only:
            bits |= 1 << F_RO
        return bits

    def replace_backend(self, backend: BlockBackend | None,
                        serial: str = "") -> BlockBackend | None:
        """Hot-replace: swap the image (None = empty slot); returns the old one.

        The guest learns the new capacity through a config-change interrupt
        (virtio 1.2 §5.2.4: capacity may change; Linux re-reads it).  A slot's
        feature bits were fixed at probe time, so a read-only image plugged into
        a slot the guest saw as writable answers its writes with IOERR.
        """
        native = NativeBlk(backend) if backend is not None else None
        with self.lock:
            self.stop_native_kicks()     # (none in C with the old image once this returns)
            if self._native is not None:
                self._native.fold(self.counters)     # (its counts stay the device's)
            old, self.backend = self.backend, backend
            self.serial = serial.encode()[:ID_BYTES]
            self._native = native
        if self.active and self.interrupt is not None:
            self.interrupt.signal_config()
        return old

    def config_space(self) -> bytes:
        """capacity, seg_max (queue size - 2, as QEMU), blk_size 512."""
        capacity = self.backend.sectors if self.backend is not None else 0
        return CONFIG.pack(capacity, 0, QUEUE_SIZE - 2, 0, SECTOR, *([0] * 11))

    # -- requests ------------------------------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """Serve requests (a budget per loop turn), pausing while the iops bucket is empty;
        reads and writes in C where it can."""
        native = self._native
        if native is None:
            self.serve(index, self._request, ops_limit=self._bucket)
            return
        try:
            self.serve(index, self._request, ops_limit=self._bucket, native=native.handler)
        finally:                 # also when the ring broke after C served some
            self.after_native(index)

    def native_kick(self, index: int) -> NativeHandler | None:
        """C may serve kicks without Python while there is no iops limit (its bucket is
        Python's) and a backend C can read and write."""
        native = self._native
        return native.handler if native is not None and self._bucket is None else None

    def after_native(self, index: int) -> None:
        """What C served (in the loop's wait, or under ``serve``) into ``counters``; under
        the lock, so that ``stats`` never counts it twice."""
        with self.lock:
            if self._native is not None:
                self._native.fold(self.counters)

    def unfolded_counts(self) -> dict[str, int]:
        """What C served and ``after_native`` has not folded in yet."""
        native = self._native
        return native.unfolded() if native is not None else {}

    def stats(self) -> dict[str, int]:
        """The counters, C's unfolded ones included (under the lock: see ``after_native``)."""
        with self.lock:
            return super().stats()

    def _request(self, chain: DescriptorChain) -> int:
        """Execute one request; returns the bytes written to the guest (data + status)."""
        memory = self.memory
        assert memory is not None
        self.counters["requests"] += 1
        if chain.writable_len < 1:
            self.guest_fault("no-status", f"request at head {chain.head} has no status byte")
            return 0
        if chain.readable_len < HEADER.size:
            self.guest_fault("header", f"request at head {chain.head}: header shorter than 16")
            return self._finish(memory, chain, S_IOERR, 0)
        kind, _reserved, sector = HEADER.unpack(chain.read_all(memory, HEADER.size))
        if kind == T_IN:
            return self._read(memory, chain, sector)
        if kind == T_OUT:
            return self._write(memory, chain, sector)
        if kind == T_FLUSH:
            return self._finish(memory, chain, self._flush(), 0)
        if kind == T_GET_ID:
            # the id goes before the status byte, as much of it as fits (§5.2.6)
            ident = self.serial.ljust(ID_BYTES, b"\0")[: chain.writable_len - 1]
            return self._finish(memory, chain, S_OK, chain.write_all(memory, ident))
        self.guest_fault("type", f"unsupported request type {kind}")
        return self._finish(memory, chain, S_UNSUPP, 0)

    def _range_ok(self, sector: int, length: int) -> bool:
        backend = self.backend
        if backend is None or length % SECTOR:
            return False
        return sector <= backend.sectors and length // SECTOR <= backend.sectors - sector

    def _read(self, memory: GuestMemoryProtocol, chain: DescriptorChain, sector: int) -> int:
        views = _data_views(memory, chain, writable=True)
        length = sum(len(v) for v in views)
        if not self._range_ok(sector, length):
            self.guest_fault("range", f"read of {length} bytes at sector {sector} out of range")
            return self._finish(memory, chain, S_IOERR, 0)
        assert self.backend is not None
        try:
            done = self.backend.read(views, sector * SECTOR)
        except OSError as exc:
            return self._host_error(memory, chain, "read", exc)
        self.counters["bytes_read"] += done
        return self._finish(memory, chain, S_OK, done)

    def _write(self, memory: GuestMemoryProtocol, chain: DescriptorChain, sector: int) -> int:
        if self.backend is None or self.backend.read_only:
            self.counters["errors"] += 1
            return self._finish(memory, chain, S_IOERR, 0)    # §5.2.6.2 read-only: IOERR
        views = _data_views(memory, chain, writable=False)
        length = sum(len(v) for v in views)
        if not self._range_ok(sector, length):
            self.guest_fault("range", f"write of {length} bytes at sector {sector} out of range")
            return self._finish(memory, chain, S_IOERR, 0)
        try:
            done = self.backend.write(views, sector * SECTOR)
        except OSError as exc:
            return self._host_error(memory, chain, "write", exc)
        self.counters["bytes_written"] += done
        return self._finish(memory, chain, S_OK if done == length else S_IOERR, 0)

    def _flush(self) -> int:
        if self.backend is None:
            return S_IOERR
        try:
            self.backend.flush()
        except OSError as exc:
            self._host_failure("flush", exc)
            return S_IOERR
        return S_OK

    def _host_error(self, memory: GuestMemoryProtocol, chain: DescriptorChain, what: str,
                    exc: OSError) -> int:
        self._host_failure(what, exc)
        return self._finish(memory, chain, S_IOERR, 0)

    def _host_failure(self, what: str, exc: OSError) -> None:
        """Count a failed host operation; log each (operation, errno) once per drive."""
        self.host_error(f"{what}-{exc.errno}", f"host {what} failed: {exc}")

    @staticmethod
    def _finish(memory: GuestMemoryProtocol, chain: DescriptorChain, status: int,
                data_written: int) -> int:
        """Store the status byte (the chain's last writable byte, §5.2.6); returns the used
        length."""
        last = chain.writable[-1]
        if last.length:            # the usual framing: the status byte ends the last buffer
            memory.write(last.addr + last.length - 1, _STATUS[status])
        else:
            chain.write_all(memory, _STATUS[status], offset=chain.writable_len - 1)
        return data_written + 1

    def close(self) -> None:
        """Close the image."""
        if self.backend is not None:
            self.backend.close()



def _data_views(memory: GuestMemoryProtocol, chain: DescriptorChain,
                writable: bool) -> list[memoryview]:
    """The data part of a request: readable bytes after the header, or writable bytes
    before the status byte (any framing, §5.2.6); Linux's framing (header, data buffers,
    status byte, each its own descriptor) without slicing twice."""
    if writable:
        data = chain.writable
        if data[-1].length == 1:
            return [memory.slice(d.addr, d.length) for d in data[:-1] if d.length]
        return trim_views(chain.write_views(memory), chain.writable_len - 1)
    data = chain.readable
    if data[0].length == HEADER.size:
        return [memory.slice(d.addr, d.length) for d in data[1:] if d.length]
    return skip_views(chain.read_views(memory), HEADER.size)

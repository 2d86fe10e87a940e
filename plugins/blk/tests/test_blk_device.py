"""virtio-blk requests (virtio 1.2 §5.2.6) through the real transport, no KVM."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from stratovmm_blk.backend import BlockBackend
from stratovmm_blk.device import (
    F_FLUSH,
    F_RO,
    S_IOERR,
    S_OK,
    S_UNSUPP,
    T_FLUSH,
    T_GET_ID,
    T_IN,
    T_OUT,
    BlockDevice,
)

from stratovmm.api import ConfigError, EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer

SECTORS = 64


def image(tmp_path: Path, fill: bytes = b"") -> str:
    path = tmp_path / "disk.img"
    data = fill or bytes(i % 251 for i in range(SECTORS * 512))
    path.write_bytes(data)
    return str(path)


def harness(path: str, read_only: bool = False, direct: bool = False, serial: str = "SER-1",
            iops: int | None = None) -> DeviceHarness:
    loop = EventLoop("blk-test")
    device = BlockDevice("d0", BlockBackend(path, read_only, direct), serial, loop, iops)
    h = DeviceHarness(device, loop=loop)
    h.start()
    return h


def submit(h: DeviceHarness, kind: int, sector: int = 0, data: bytes = b"",
           read_len: int = 0, header_len: int = 16) -> tuple[int, int, int]:
    """Post one request; returns (used length, status byte, data address)."""
    memory = h.memory
    hdr = h.alloc(16)
    memory.write(hdr, struct.pack("<IIQ", kind, 0, sector))
    buffers = [Buffer(hdr, header_len)]
    addr = 0
    if data:
        addr = h.alloc(len(data), 512)
        memory.write(addr, data)
        buffers.append(Buffer(addr, len(data)))
    if read_len:
        addr = h.alloc(read_len, 512)
        buffers.append(Buffer(addr, read_len, True))
    status = h.alloc(1)
    memory.write(status, b"\xee")
    buffers.append(Buffer(status, 1, True))
    q = h.queues[0]
    q.add_chain(buffers)
    h.kick(0)
    (_head, used_len), = q.used_elements()
    return used_len, memory.read(status, 1)[0], addr


def test_read_returns_image_bytes(tmp_path: Path) -> None:
    """T_IN copies the sectors into the guest buffers and reports data+status length."""
    path = image(tmp_path)
    h = harness(path)
    used, status, addr = submit(h, T_IN, sector=2, read_len=1024)
    assert status == S_OK and used == 1025
    assert h.memory.read(addr, 1024) == Path(path).read_bytes()[1024:2048]


def test_write_lands_in_the_file_and_flush_succeeds(tmp_path: Path) -> None:
    """T_OUT writes at sector*512; T_FLUSH answers OK (fdatasync)."""
    path = image(tmp_path)
    h = harness(path)
    used, status, _ = submit(h, T_OUT, sector=3, data=b"\xab" * 512)
    assert (used, status) == (1, S_OK)
    assert Path(path).read_bytes()[3 * 512 : 4 * 512] == b"\xab" * 512
    assert submit(h, T_FLUSH)[1] == S_OK


def test_get_id_returns_the_serial(tmp_path: Path) -> None:
    """T_GET_ID fills 20 bytes with the drive's serial, NUL padded."""
    h = harness(image(tmp_path), serial="ABC123")
    used, status, addr = submit(h, T_GET_ID, read_len=20)
    assert status == S_OK and used == 21
    assert h.memory.read(addr, 20) == b"ABC123".ljust(20, b"\0")


def test_read_only_drive_offers_ro_and_refuses_writes(tmp_path: Path) -> None:
    """read_only → VIRTIO_BLK_F_RO, and writes answer IOERR leaving the image unchanged."""
    path = image(tmp_path)
    before = Path(path).read_bytes()
    h = harness(path, read_only=True)
    assert h.device_features() & (1 << F_RO)
    assert submit(h, T_OUT, sector=0, data=b"\x11" * 512)[1] == S_IOERR
    assert Path(path).read_bytes() == before


def test_flush_is_offered(tmp_path: Path) -> None:
    """VIRTIO_BLK_F_FLUSH is offered so the guest's fsync reaches the host file."""
    assert harness(image(tmp_path)).device_features() & (1 << F_FLUSH)


@pytest.mark.parametrize("sector,length", [(SECTORS, 512), (SECTORS - 1, 1024),
                                           (2**63, 512), (0, 100)])
def test_out_of_range_or_partial_sector_reads_fail(tmp_path: Path, sector: int,
                                                    length: int) -> None:
    """Reads past the capacity or not a multiple of 512 bytes answer IOERR (§5.2.6.1)."""
    h = harness(image(tmp_path))
    assert submit(h, T_IN, sector=sector, read_len=length)[1] == S_IOERR
    assert h.device.counters["guest_faults"] >= 1


def test_unknown_request_type_is_unsupported(tmp_path: Path) -> None:
    """Types we do not implement answer UNSUPP."""
    h = harness(image(tmp_path))
    assert submit(h, 99)[1] == S_UNSUPP


def test_short_header_answers_ioerr(tmp_path: Path) -> None:
    """A request whose readable part is shorter than the 16-byte header fails cleanly."""
    h = harness(image(tmp_path))
    assert submit(h, T_IN, header_len=8, read_len=512)[1] == S_IOERR


def test_request_without_status_byte_is_completed_with_zero(tmp_path: Path) -> None:
    """No writable byte: nothing to report in, completed with length 0 and counted."""
    h = harness(image(tmp_path))
    hdr = h.alloc(16)
    h.memory.write(hdr, struct.pack("<IIQ", T_IN, 0, 0))
    q = h.queues[0]
    q.add_chain([Buffer(hdr, 16)])
    h.kick(0)
    assert q.used_elements()[0][1] == 0
    assert h.device.counters["guest_faults"] == 1


def test_direct_io_with_aligned_and_unaligned_buffers(tmp_path: Path) -> None:
    """direct=on: aligned buffers go straight to O_DIRECT; unaligned ones bounce; both correct."""
    path = image(tmp_path)
    h = harness(path, direct=True)
    _used, status, addr = submit(h, T_IN, sector=1, read_len=512)
    assert status == S_OK and h.memory.read(addr, 512) == Path(path).read_bytes()[512:1024]
    hdr = h.alloc(16)
    h.memory.write(hdr, struct.pack("<IIQ", T_IN, 0, 4))
    odd = h.alloc(600, 512) + 8                      # unaligned guest buffer
    st = h.alloc(1)
    q = h.queues[0]
    q.add_chain([Buffer(hdr, 16), Buffer(odd, 512, True), Buffer(st, 1, True)])
    h.kick(0)
    assert h.memory.read(st, 1)[0] == S_OK
    assert h.memory.read(odd, 512) == Path(path).read_bytes()[2048:2560]
    hdr2 = h.alloc(16)
    h.memory.write(hdr2, struct.pack("<IIQ", T_OUT, 0, 5))
    h.memory.write(odd, b"\x5a" * 512)
    q.add_chain([Buffer(hdr2, 16), Buffer(odd, 512), Buffer(st, 1, True)])
    h.kick(0)
    assert h.memory.read(st, 1)[0] == S_OK
    assert Path(path).read_bytes()[2560:3072] == b"\x5a" * 512


def test_iops_limit_defers_requests_to_a_timer(tmp_path: Path) -> None:
    """iops=N: beyond the bucket, requests wait for a timer instead of being served at once."""
    h = harness(image(tmp_path), iops=2)
    q = h.queues[0]
    for _ in range(5):
        hdr = h.alloc(16)
        h.memory.write(hdr, struct.pack("<IIQ", T_FLUSH, 0, 0))
        q.add_chain([Buffer(hdr, 16), Buffer(h.alloc(1), 1, True)])
    h.kick(0)
    assert len(q.used_elements()) == 2
    assert h.loop.pending_timers(), "a timer must be armed for the rest"


def test_capacity_in_config_space(tmp_path: Path) -> None:
    """The config space's capacity is the image size in 512-byte sectors."""
    h = harness(image(tmp_path))
    assert struct.unpack("<Q", h.read_config(0, 8))[0] == SECTORS


def test_missing_and_directory_images_are_config_errors(tmp_path: Path) -> None:
    """A missing image or a directory is refused with the option named."""
    with pytest.raises(ConfigError, match="-drive file"):
        BlockBackend(str(tmp_path / "nope.img"))
    with pytest.raises(ConfigError, match="directory"):
        BlockBackend(str(tmp_path))


def test_host_read_error_answers_ioerr(tmp_path: Path) -> None:
    """A failing host read is IOERR to the guest and counted, not a crash."""
    h = harness(image(tmp_path))
    backend = h.device.backend
    assert backend is not None
    os.close(backend.fd)
    backend.fd = os.open(str(tmp_path), os.O_RDONLY)   # a directory: preadv fails (EISDIR)
    assert submit(h, T_IN, sector=0, read_len=512)[1] == S_IOERR
    assert h.device.counters["errors"] == 1


def test_a_writable_image_can_be_opened_once(tmp_path: Path) -> None:
    """Image locking: a second writer is refused; readers may share a read-only image."""
    path = image(tmp_path)
    first = BlockBackend(path)
    with pytest.raises(ConfigError, match="in use"):
        BlockBackend(path)
    with pytest.raises(ConfigError, match="in use"):
        BlockBackend(path, read_only=True)
    first.close()
    readers = [BlockBackend(path, read_only=True), BlockBackend(path, read_only=True)]
    with pytest.raises(ConfigError, match="in use"):
        BlockBackend(path)
    for reader in readers:
        reader.close()


def test_empty_descriptor_outside_ram_completes_and_the_batch_goes_on(tmp_path: Path) -> None:
    """A request with a zero-length buffer outside guest RAM is refused whole (used with
    length 0, counted) and the request after it in the same kick is still served."""
    h = harness(image(tmp_path))
    q = h.queues[0]
    hdr = h.alloc(16)
    h.memory.write(hdr, struct.pack("<IIQ", T_IN, 0, 0))
    st = h.alloc(1)
    bad = q.add_chain([Buffer(hdr, 16), Buffer(0xFFFF_FFFF_0000, 0, True), Buffer(st, 1, True)])
    good_data = h.alloc(512, 512)
    good = q.add_chain([Buffer(hdr, 16), Buffer(good_data, 512, True), Buffer(st, 1, True)])
    h.kick(0)
    used = dict(q.used_elements())
    assert used == {bad: 0, good: 513}
    assert h.device.counters["guest_faults"] == 1


# -- O_DIRECT bouncing: host memory bounded by a constant, not by the request -------------


def peak_rss_growth(action: object) -> int:
    """Bytes the process's peak resident set (VmHWM) grew by while ``action()`` ran."""
    def status(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        line = next(x for x in text.splitlines() if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")      # VmHWM := VmRSS
    before = status("VmHWM")
    action()  # type: ignore[operator]
    return status("VmHWM") - before


def test_unaligned_direct_read_of_a_huge_chain_bounces_in_fixed_chunks(tmp_path: Path) -> None:
    """An unaligned direct=on read of 256 MiB (64 descriptors over one 4 MiB guest buffer)
    costs the host a bounded bounce buffer, not one as large as the request; the data that
    lands is the file's (the last descriptor's range)."""
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(300 << 20)
        f.seek((256 << 20) - (4 << 20))
        f.write(bytes(i % 253 for i in range(4 << 20)))
    loop = EventLoop("blk-test")
    device = BlockDevice("d0", BlockBackend(str(path), direct=True), "", loop)
    h = DeviceHarness(device, memory_size=16 << 20, queue_size=128, loop=loop)
    h.start()
    hdr = h.alloc(16)
    h.memory.write(hdr, struct.pack("<IIQ", T_IN, 0, 0))
    buf = h.alloc((4 << 20) + 512, 4096) + 1            # unaligned: the request must bounce
    st = h.alloc(1)
    q = h.queues[0]
    q.add_indirect_chain(h.alloc(16 * 66), [Buffer(hdr, 16)]
                         + [Buffer(buf, 4 << 20, True)] * 64 + [Buffer(st, 1, True)])
    growth = peak_rss_growth(lambda: h.kick(0))
    assert h.memory.read(st, 1)[0] == S_OK
    assert q.used_elements()[0][1] == (256 << 20) + 1
    assert h.memory.read(buf, 4 << 20) == bytes(i % 253 for i in range(4 << 20))
    assert growth < 16 << 20, f"peak RSS grew by {growth >> 20} MiB for one request"


@pytest.mark.parametrize("offset", [1, 511, 4095])
def test_unaligned_direct_io_across_chunks_is_exact(tmp_path: Path, offset: int) -> None:
    """Unaligned direct=on reads and writes of several bounce chunks move exactly the right
    bytes, split over ragged guest buffers."""
    size = 3 << 20
    path = tmp_path / "disk.img"
    original = os.urandom(8 << 20)
    path.write_bytes(original)
    loop = EventLoop("blk-test")
    device = BlockDevice("d0", BlockBackend(str(path), direct=True), "", loop)
    h = DeviceHarness(device, memory_size=16 << 20, loop=loop)
    h.start()
    pieces = [(1 << 20) + 7, 333, size - (1 << 20) - 7 - 333]
    addrs = [h.alloc(n + 8192, 4096) + offset for n in pieces]
    hdr, st = h.alloc(16), h.alloc(1)
    q = h.queues[0]
    h.memory.write(hdr, struct.pack("<IIQ", T_IN, 0, 3))
    q.add_chain([Buffer(hdr, 16)] + [Buffer(a, n, True) for a, n in zip(addrs, pieces, strict=True)]
                + [Buffer(st, 1, True)])
    h.kick(0)
    assert h.memory.read(st, 1)[0] == S_OK
    got = b"".join(h.memory.read(a, n) for a, n in zip(addrs, pieces, strict=True))
    assert got == original[3 * 512 : 3 * 512 + size]
    data = os.urandom(size)
    pos = 0
    for a, n in zip(addrs, pieces, strict=True):
        h.memory.write(a, data[pos : pos + n])
        pos += n
    h.memory.write(hdr, struct.pack("<IIQ", T_OUT, 0, 5))
    q.add_chain([Buffer(hdr, 16)] + [Buffer(a, n) for a, n in zip(addrs, pieces, strict=True)]
                + [Buffer(st, 1, True)])
    h.kick(0)
    assert h.memory.read(st, 1)[0] == S_OK
    assert path.read_bytes() == original[: 5 * 512] + data + original[5 * 512 + size :]


def test_host_errors_are_logged_once_per_kind(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Ten failing reads answer IOERR ten times and count ten errors, but log one line."""
    h = harness(image(tmp_path))
    backend = h.device.backend
    assert backend is not None
    os.close(backend.fd)
    backend.fd = os.open(str(tmp_path), os.O_RDONLY)   # a directory: preadv fails (EISDIR)
    caplog.clear()
    for _ in range(10):
        assert submit(h, T_IN, sector=0, read_len=512)[1] == S_IOERR
    assert h.device.counters["errors"] == 10
    lines = [r for r in caplog.records if "read" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]

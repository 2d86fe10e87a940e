"""virtio-blk and virtio-rng seen from inside the Linux guest (one boot).

Root is a copy of rootfs.ext4 on vda (read-write), vdb is a raw drive on an
iothread with O_DIRECT, vdc a read-only drive with a serial and an iops limit;
the rng draws from a file of random bytes.  The guest reports what it sees;
the host then checks the images.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stratovmm.testing.guest import GuestRun, boot_args, boot_lock, run_guest

PATTERN_BLOCKS = 16

GUEST_SCRIPT = r"""
echo "SERIAL-A=$(cat /sys/block/vda/serial)"
echo "SERIAL-C=$(cat /sys/block/vdc/serial)"
echo "SIZES=$(cat /sys/block/vda/size) $(cat /sys/block/vdb/size) $(cat /sys/block/vdc/size)"
echo "RO=$(cat /sys/block/vda/ro) $(cat /sys/block/vdb/ro) $(cat /sys/block/vdc/ro)"
echo guest-wrote-this > /root/from-guest.txt
sync
i=0
while [ $i -lt 256 ]; do printf 'STRATOVMM-BLOCK-%04d-......\n' $i; i=$((i+1)); done > /tmp/pattern
dd if=/tmp/pattern of=/dev/vdb bs=4096 conv=fsync 2>/dev/null
echo "PATTERN-MD5=$(md5sum < /tmp/pattern)"
echo "VDC-MD5=$(head -c 65536 /dev/vdc | md5sum)"
dd if=/dev/zero of=/dev/vdc bs=512 count=1 conv=fsync 2>/dev/null; echo "RO-WRITE-RC=$?"
echo "RNG=$(cat /sys/class/misc/hw_random/rng_current)"
head -c 4096 /dev/hwrng > /tmp/rng
echo "HWRNG-LEN=$(wc -c < /tmp/rng)"
dd if=/tmp/rng of=/dev/vdb bs=4096 seek=256 conv=fsync 2>/dev/null
"""
HWRNG_OFFSET = 256 * 4096     # where the guest puts the bytes it read from /dev/hwrng, on vdb
MATCH = 16                    # bytes that place a piece in random_file (1 MiB of random bytes)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, guest: Path) -> dict[str, Path]:
    """A writable rootfs copy, a raw drive, a read-only drive, an entropy file."""
    d = tmp_path_factory.mktemp("blk")
    root = d / "root.ext4"
    shutil.copyfile(guest / "rootfs.ext4", root)
    raw = d / "raw.img"
    raw.write_bytes(bytes(8 << 20))
    ro = d / "ro.img"
    ro.write_bytes(os.urandom(1 << 20))
    entropy = d / "entropy.bin"
    entropy.write_bytes(os.urandom(1 << 20))
    return {"root": root, "raw": raw, "ro": ro, "entropy": entropy}


@pytest.fixture(scope="module")
def run(images: dict[str, Path], guest: Path) -> GuestRun:
    """Boot once with all drives and the rng; everything below reads this run."""
    ro_before = hashlib.sha256(images["ro"].read_bytes()).hexdigest()
    args = boot_args(guest, GUEST_SCRIPT, extra_append="root=/dev/vda rw init=/init",
                     smp=2, mem="512M", initrd=False)
    args += [
        "-iothread", "id=io0",
        "-drive", f"id=root,file={images['root']},serial=ROOT-SERIAL-1",
        "-drive", f"id=raw,file={images['raw']},iothread=io0,direct=on",
        "-drive", f"id=ro,file={images['ro']},readonly=on,serial=RO-DISK,iops=1000",
        "-rng", f"random_file={images['entropy']},bytes_per_sec=1000000",
    ]
    with boot_lock():
        result = run_guest(args)
    result.ro_before = ro_before  # type: ignore[attr-defined]
    return result


def field(run: GuestRun, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}=(.*)$", run.command_output, re.M)
    assert m, f"{name} missing from guest output:\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    return m.group(1).strip()


def test_guest_boots_from_virtio_blk_and_exits_cleanly(run: GuestRun) -> None:
    """The guest's /init ran from the ext4 root on vda; the VM exited 0 after reboot."""
    assert run.ready, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.command_rc == 0
    assert run.returncode == 0


def test_drive_sizes_serials_and_readonly_as_the_guest_sees_them(run: GuestRun,
                                                                 images: dict[str, Path]) -> None:
    """Sizes in sectors, /sys/block/vdX/serial, and ro=1 only for readonly=on."""
    sizes = [int(x) for x in field(run, "SIZES").split()]
    assert sizes == [images[k].stat().st_size // 512 for k in ("root", "raw", "ro")]
    assert field(run, "SERIAL-A") == "ROOT-SERIAL-1"
    assert field(run, "SERIAL-C") == "RO-DISK"
    assert field(run, "RO").split() == ["0", "0", "1"]


def test_file_written_on_the_root_fs_is_in_the_image(run: GuestRun,
                                                     images: dict[str, Path]) -> None:
    """A file the guest wrote and synced is found by debugfs; e2fsck -fn is clean."""
    assert run.returncode == 0
    out = subprocess.run(["debugfs", "-R", "cat /root/from-guest.txt", str(images["root"])],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "guest-wrote-this"
    fsck = subprocess.run(["e2fsck", "-fn", str(images["root"])], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_raw_drive_holds_what_the_guest_wrote_through_the_iothread(
        run: GuestRun, images: dict[str, Path]) -> None:
    """Bytes the guest wrote with dd (O_DIRECT, iothread) equal what the host reads back."""
    expected = "".join(f"STRATOVMM-BLOCK-{i:04d}-......\n" for i in range(256)).encode()
    data = images["raw"].read_bytes()[: len(expected)]
    assert data == expected
    assert field(run, "PATTERN-MD5").split()[0] == hashlib.md5(expected).hexdigest()


def test_read_only_drive_is_readable_and_unchanged(run: GuestRun, images: dict[str, Path]) -> None:
    """The guest reads the read-only image's bytes; its write fails; the image is unchanged."""
    digest = hashlib.md5(images["ro"].read_bytes()[:65536]).hexdigest()
    assert field(run, "VDC-MD5").split()[0] == digest
    assert field(run, "RO-WRITE-RC") != "0"
    assert hashlib.sha256(images["ro"].read_bytes()).hexdigest() == run.ro_before  # type: ignore[attr-defined]


def pieces_of(data: bytes, source: bytes) -> list[tuple[int, int]]:
    """``data`` as in-order pieces of ``source``: (offset in source, length) per piece.

    The guest kernel's ``[hwrng]`` thread draws from the same device to feed its entropy
    pool (virtio_rng's quality is 1000), so what ``/dev/hwrng`` gives a reader is the
    device's stream with a few gaps wherever that thread took its share.  Each piece is
    placed by its first ``MATCH`` bytes, which random bytes repeat by chance with odds of
    about 2^-108 over a 1 MiB source."""
    pieces: list[tuple[int, int]] = []
    at, i = 0, 0
    while i < len(data):
        found = source.find(data[i:i + MATCH], at)
        assert found >= 0, f"bytes {i}..{i + MATCH} of the guest's read are not from random_file"
        length = 0
        while i + length < len(data) and found + length < len(source) \
                and data[i + length] == source[found + length]:
            length += 1
        pieces.append((found, length))
        at, i = found + length, i + length
    return pieces


def test_hwrng_draws_from_random_file(run: GuestRun, images: dict[str, Path]) -> None:
    """/dev/hwrng is virtio_rng and the 4096 bytes the guest read from it (and wrote to vdb)
    are random_file's bytes in order: one run, or a few where the kernel's own thread
    took some."""
    assert field(run, "RNG").startswith("virtio_rng")
    # Short lines only: a kernel message can land inside a long serial line.
    assert field(run, "HWRNG-LEN") == "4096"
    read = images["raw"].read_bytes()[HWRNG_OFFSET:HWRNG_OFFSET + 4096]
    pieces = pieces_of(read, images["entropy"].read_bytes())
    assert len(pieces) <= 8, pieces

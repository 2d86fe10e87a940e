"""A freestanding virtio-mmio driver (tests/kvm/guests/virtio_guest.c, built here with gcc)
negotiates, reads and writes a drive and reads the rng — on StratoVMM and, with the
same binary, on QEMU -M microvm."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stratovmm.testing.guest import stratovmm_command

GUESTS = Path(__file__).parent / "guests"
CFLAGS = ["-m32", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-fno-stack-protector",
          "-mgeneral-regs-only", "-nostdlib", "-static", "-O2", "-Wall",
          "-Wl,-Ttext=0x100000", "-Wl,--build-id=none"]
QEMU = shutil.which("qemu-system-x86_64")


@pytest.fixture(scope="module")
def guest_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test guest as a 32-bit PVH ELF."""
    out = tmp_path_factory.mktemp("virtio-guest") / "virtio_guest.elf"
    subprocess.run(["gcc", *CFLAGS, "-o", str(out), str(GUESTS / "pvh_start.S"),
                    str(GUESTS / "virtio_guest.c")], check=True)
    return out


def disk_and_entropy(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A 1 MiB disk whose sector 1 holds the pattern the guest checks, and an entropy file."""
    disk = bytearray(1 << 20)
    for i in range(512):
        disk[512 + i] = 0xA0 ^ (i & 0xFF)
    image = tmp_path / "disk.img"
    image.write_bytes(disk)
    entropy = os.urandom(4096)
    source = tmp_path / "entropy.bin"
    source.write_bytes(entropy)
    return image, source, entropy


def check(output: str, image: Path, entropy: bytes) -> None:
    """What the guest says and what it left on the disk."""
    assert "VIRTIO-GUEST-DONE" in output, output
    for marker in ("BLK-READ-OK", "BLK-WRITE-OK", "BLK-FLUSH-OK", "BLK capacity=2048"):
        assert marker in output, output
    sector2 = image.read_bytes()[1024:1536]
    message = b"WRITTEN-BY-THE-FREESTANDING-GUEST"
    assert sector2[: len(message)] == message
    assert sector2[len(message):] == bytes((i * 3) & 0xFF for i in range(len(message), 512))
    rng = next(line for line in output.splitlines() if line.startswith("RNG "))
    assert rng.split("data=")[1].strip() == entropy[:32].hex()


def test_virtio_guest_on_stratovmm(kvm_available: None, guest_elf: Path, tmp_path: Path) -> None:
    """The guest reads the host's sector, writes and flushes its own, reads the rng file."""
    image, source, entropy = disk_and_entropy(tmp_path)
    proc = subprocess.run(
        [*stratovmm_command(), "-kernel", str(guest_elf), "-serial", "stdio",
         "-drive", f"id=d0,file={image}", "-rng", f"random_file={source}"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check(proc.stdout, image, entropy)


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_same_binary_on_qemu_microvm(kvm_available: None, guest_elf: Path,
                                     tmp_path: Path) -> None:
    """QEMU's microvm machine runs the same guest binary to the same result."""
    image, source, entropy = disk_and_entropy(tmp_path)
    assert QEMU is not None
    proc = subprocess.run(
        [QEMU, "-M", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=off,acpi=off",
         "-enable-kvm", "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-user-config",
         "-nographic", "-serial", "stdio", "-no-reboot", "-device", "i8042", "-m", "256M",
         "-global", "virtio-mmio.force-legacy=false",
         "-drive", f"id=d0,file={image},format=raw,if=none",
         "-device", "virtio-blk-device,drive=d0",
         "-object", f"rng-random,id=r0,filename={source}", "-device", "virtio-rng-device,rng=r0",
         "-kernel", str(guest_elf), "-append", "x"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check(proc.stdout, image, entropy)

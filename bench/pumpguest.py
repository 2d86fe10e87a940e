"""The pump guest (``bench/pump/``): how to build it, the disk image its blk pump reads,
what its reports say, and the host-side replica of its request stream (for checks).

The guest is a freestanding x86-64 PVH ELF built with the system gcc; the same binary
boots on StratoVMM and on QEMU ``-M microvm`` (``-kernel``).  Its kernel command line
chooses the pump (``pump.mode=blk|net|exits``) and the job; it prints
``PUMP-READY job=J``, waits for one byte on the serial line (the host reads the VMM's
CPU times in between), runs, prints ``PUMP-END job=J key=value ...`` and resets.
"""

from __future__ import annotations

import mmap
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "pump"
CFLAGS = ["-m64", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-fno-stack-protector",
          "-mno-red-zone", "-mgeneral-regs-only", "-fno-tree-loop-distribute-patterns",
          "-nostdlib", "-static", "-O2", "-Wall", "-Werror", "-Wl,-Ttext=0x100000",
          "-Wl,--build-id=none", "-Wl,-z,noexecstack"]
FILES = ("start64.S", "main.c", "rt.c", "virtio.c", "blk.c", "net.c", "exits.c")

SECTOR = 512
ORIG_MAGIC = 0x70756D702D696D67     # "pump-img": first 8 bytes of every sector of the image
WRITE_MAGIC = 0x70756D702D777274    # "pump-wrt": what a write job stamps
NET_MAGIC = 0x706D7570
ETHERTYPE = 0x88B5
MASK64 = (1 << 64) - 1


def build(directory: Path) -> Path:
    """Compile the guest into ``directory/pump.elf`` (gcc's message on failure)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "pump.elf"
    proc = subprocess.run(["gcc", *CFLAGS, "-o", str(out), *(str(SOURCES / f) for f in FILES)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the pump guest failed:\n{proc.stderr}")
    return out


def make_image(path: Path, size: int) -> None:
    """A raw image of ``size`` bytes (a multiple of 512), every page written (no holes):
    sector s starts with the 8 bytes ``s ^ ORIG_MAGIC`` (little-endian), the rest zero."""
    if size % SECTOR:
        raise ValueError("the image size must be a multiple of 512")
    chunk = 1 << 20
    with open(path, "wb") as f:
        for start in range(0, size, chunk):
            block = bytearray(min(chunk, size - start))
            words = memoryview(block).cast("Q")
            first = start // SECTOR
            for i in range(len(block) // SECTOR):
                words[i * (SECTOR // 8)] = (first + i) ^ ORIG_MAGIC
            f.write(block)


def report(output: str, tag: str = "PUMP-END") -> dict[str, str] | None:
    """The ``key=value`` fields of the guest's ``tag`` line, or None."""
    m = re.search(rf"^{tag} (.*)$", output, re.M)
    if m is None:
        return None
    return dict(field.split("=", 1) for field in m.group(1).split() if "=" in field)


def xorshift64(state: int) -> int:
    """The guest's PRNG step (rt.c)."""
    x = state
    x ^= (x << 13) & MASK64
    x ^= x >> 7
    x ^= (x << 17) & MASK64
    return x


def lbas(job: str, count: int, bs: int, capacity_sectors: int, seed: int = 1) -> Iterator[int]:
    """The first sector of each of the ``count`` requests the blk pump makes, in order."""
    blocks = capacity_sectors * SECTOR // bs
    state, block = seed | 1, 0
    for _ in range(count):
        if job.startswith("rand"):
            state = xorshift64(state)
            yield (state % blocks) * (bs // SECTOR)
        else:
            yield block * (bs // SECTOR)
            block = (block + 1) % blocks


def checked_offsets(bs: int) -> list[int]:
    """The byte offsets in a block whose sector's first word the guest checks or stamps
    (blk.c ``next_checked``): every max(512, bs/16) bytes, and the last sector."""
    stride = max(SECTOR, bs // 16)
    last = bs - SECTOR
    out, off = [], 0
    while off < bs:
        out.append(off)
        off = bs if off == last else min(off + stride, last)
    return out


def expected_read_csum(job: str, count: int, bs: int, capacity_sectors: int) -> int:
    """The checksum a read job reports on a fresh image (sum of the words it checked)."""
    offsets = checked_offsets(bs)
    total = 0
    for lba in lbas(job, count, bs, capacity_sectors):
        for off in offsets:
            total += (lba + off // SECTOR) ^ ORIG_MAGIC
    return total & MASK64


def check_written(path: Path, job: str, count: int, bs: int) -> list[str]:
    """Problems in the image after a write job on a fresh image (empty when right): every
    checked sector of every block written holds the stamp, its other sectors zeros (the
    guest's buffers start zeroed and only the checked sectors are ever stamped), and every
    sector outside them is still the original."""
    size = path.stat().st_size
    written = {lba + i for lba in lbas(job, count, bs, size // SECTOR)
               for i in range(bs // SECTOR)}
    stamped = {lba + off // SECTOR for lba in lbas(job, count, bs, size // SECTOR)
               for off in checked_offsets(bs)}
    problems: list[str] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        words = memoryview(m).cast("Q")
        for sector in range(size // SECTOR):
            word = words[sector * (SECTOR // 8)]
            if sector in stamped:
                want = sector ^ WRITE_MAGIC
            else:
                want = 0 if sector in written else sector ^ ORIG_MAGIC
            if word != want and len(problems) < 5:
                problems.append(f"sector {sector}: {word:#x}, expected {want:#x}")
        del words
    return problems


def frame(seq: int, size: int, src: bytes, dst: bytes = b"\xff" * 6) -> bytes:
    """The pump's Ethernet frame number ``seq`` of ``size`` bytes (net.c)."""
    payload = bytearray((i * 7 + 1) & 0xFF for i in range(size - 14))
    payload[0:8] = seq.to_bytes(4, "little") + NET_MAGIC.to_bytes(4, "little")
    return dst + src + ETHERTYPE.to_bytes(2, "big") + bytes(payload)


"""GuestMemory's u16/u32/u64 stores never show a driver anything but the old or the new
value: a native reader in another process, polling the field the whole time (as a guest
polls used->idx), never sees the 0 that ``struct.pack_into`` writes before packing."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stratovmm.memory import GuestMemory

# Polls a u16, a u32 and a u64 in a shared file mapping until byte 0 is set; prints how
# often each read 0.
SPY = r"""
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <fcntl.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    volatile uint8_t *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    long zero16 = 0, zero32 = 0, zero64 = 0, reads = 0;
    while (!p[0]) {
        zero16 += *(volatile uint16_t *)(p + 8) == 0;
        zero32 += *(volatile uint32_t *)(p + 16) == 0;
        zero64 += *(volatile uint64_t *)(p + 24) == 0;
        reads++;
    }
    printf("%ld %ld %ld %ld\n", zero16, zero32, zero64, reads);
    return 0;
}
"""


@pytest.fixture
def spy(tmp_path: Path) -> Path:
    """The reader, built with gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "spy.c"
    source.write_text(SPY)
    out = tmp_path / "spy"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(source)], check=True)
    return out


def test_stores_never_expose_a_passing_zero(spy: Path, tmp_path: Path) -> None:
    """100,000 stores of non-zero values to each field while the spy, on another CPU, reads
    them: no 0 read (with ``pack_into`` it sees thousands)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: the reader must run while the stores happen")
    shared = tmp_path / "ram"
    shared.write_bytes(bytes(4096))
    with open(shared, "r+b") as f, mmap.mmap(f.fileno(), 4096) as buf:
        memory = GuestMemory(buf, [(0, 4096)])
        memory.write_u16(8, 1)
        memory.write_u32(16, 1)
        memory.write_u64(24, 1)
        proc = subprocess.Popen([str(spy), str(shared)], stdout=subprocess.PIPE, text=True)
        os.sched_setaffinity(proc.pid, {cpus[0]})
        os.sched_setaffinity(0, {cpus[1]})
        try:
            for i in range(100_000):
                value = i % 60_000 + 1
                memory.write_u16(8, value)
                memory.write_u32(16, value)
                memory.write_u64(24, value)
        finally:
            os.sched_setaffinity(0, cpus)
            memory.write(0, b"\x01")
            out, _ = proc.communicate(timeout=30)
        del memory
    zero16, zero32, zero64, reads = map(int, out.split())
    assert reads > 0
    assert (zero16, zero32, zero64) == (0, 0, 0), f"zeros seen in {reads} reads"

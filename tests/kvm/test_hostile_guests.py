"""Tiny guests that attack the VMM on real vCPUs: a UART loopback flood must not grow the
VMM's memory, and a DRIVER_OK that cannot get its file descriptors must fail the device
(DEVICE_NEEDS_RESET), not the VM."""

from __future__ import annotations

import os
import re
import resource
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.guest import stratovmm_command

# Says FLOOD, turns on MCR loopback and writes THR for ever (every byte loops back to RBR).
SERIAL_FLOOD = """
main:
    mov $flood, %esi
    call print
    mov $0x3fc, %dx               /* MCR: LOOP | OUT2 */
    mov $0x18, %al
    outb %al, %dx
    mov $0x3f8, %dx
    xor %eax, %eax
1:  outb %al, %dx
    inc %al
    jmp 1b
flood: .asciz "FLOOD\\n"
"""

# Says READY, waits for a byte on the UART, then takes the first virtio-mmio device
# (0xd0000000) to DRIVER_OK with one 8-entry queue at 2 MiB, prints the status it reads
# back, says ALIVE and resets.
DRIVER_OK_ON_DEMAND = """
main:
    mov $ready, %esi
    call print
    mov $0x3fd, %dx
1:  inb %dx, %al
    test $1, %al
    jz 1b
    mov $0x3f8, %dx
    inb %dx, %al
    mov $0xd0000000, %edi
    movl $0, 0x70(%edi)
    movl $1, 0x70(%edi)
    movl $3, 0x70(%edi)
    movl $1, 0x24(%edi)           /* DriverFeaturesSel 1 */
    movl $1, 0x20(%edi)           /* VIRTIO_F_VERSION_1 */
    movl $0xb, 0x70(%edi)         /* FEATURES_OK */
    movl $0, 0x30(%edi)
    movl $8, 0x38(%edi)
    movl $0x200000, 0x80(%edi)
    movl $0, 0x84(%edi)
    movl $0x200100, 0x90(%edi)
    movl $0, 0x94(%edi)
    movl $0x200200, 0xa0(%edi)
    movl $0, 0xa4(%edi)
    movl $1, 0x44(%edi)           /* QueueReady */
    movl $0xf, 0x70(%edi)         /* DRIVER_OK */
    mov 0x70(%edi), %ebx
    mov $status, %esi
    call print
    mov %ebx, %eax
    call print_hex
    mov $alive, %esi
    call print
    call reset
ready:  .asciz "READY\\n"
status: .asciz "STATUS=0x"
alive:  .asciz "\\nALIVE\\n"
"""

TIMEOUT = 60


@pytest.fixture
def guests(kvm_available: None, tmp_path: Path) -> Path:
    """A directory to assemble guests in (skips without /dev/kvm)."""
    return tmp_path


def start_vmm(*args: str) -> subprocess.Popen[bytes]:
    """``stratovmm ARGS`` with the UART on pipes (logging at its default level)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("STRATOVMM_LOG_LEVEL", "STRATOVIRT_LOG_LEVEL")}
    return subprocess.Popen([*stratovmm_command(), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def wait_for(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read the VMM's stdout until ``marker`` shows up; what was read."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while marker not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise AssertionError(f"no {marker!r} from the guest: {seen!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"VMM ended before {marker!r}: {seen!r}")
            seen += chunk
    return seen


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid``."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match
    return int(match.group(1)) * 1024


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """VMM processes a test started; killed at the end if still running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_uart_loopback_flood_keeps_the_vmm_rss_flat(
        guests: Path, reaper: list[subprocess.Popen[bytes]]) -> None:
    """A guest writing THR in loopback mode for 10 s: the loopback FIFO is bounded (16 bytes,
    overrun after that), so the VMM's RSS stays within 1 MiB of where the flood began."""
    elf = build_pvh_guest_or_skip(guests, "flood", SERIAL_FLOOD)
    proc = start_vmm("-kernel", str(elf), "-serial", "stdio")
    reaper.append(proc)
    wait_for(proc, b"FLOOD\n")
    time.sleep(1.0)                    # let the first exits settle the VMM's caches
    start = rss_bytes(proc.pid)
    time.sleep(10.0)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    grown = rss_bytes(proc.pid) - start
    assert grown < 1 << 20, f"VMM RSS grew by {grown / 2**20:.1f} MiB during the flood"


def first_free_fd(pid: int) -> int:
    """The lowest fd number ``pid`` has not open."""
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def test_driver_ok_without_file_descriptors_sets_needs_reset(
        guests: Path, tmp_path: Path, reaper: list[subprocess.Popen[bytes]]) -> None:
    """The VMM is out of fds (its RLIMIT_NOFILE lowered to its lowest free fd, as a QMP
    client opening images would leave it) when the guest sets DRIVER_OK: the ioeventfds
    cannot be made, so the guest reads DEVICE_NEEDS_RESET back and runs on; the VMM
    exits 0 when the guest resets."""
    elf = build_pvh_guest_or_skip(guests, "driverok", DRIVER_OK_ON_DEMAND)
    entropy = tmp_path / "entropy"
    entropy.write_bytes(os.urandom(4096))
    proc = start_vmm("-kernel", str(elf), "-serial", "stdio",
                     "-rng", f"random_file={entropy}")
    reaper.append(proc)
    wait_for(proc, b"READY\n")
    _soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (first_free_fd(proc.pid), hard))
    assert proc.stdin is not None
    proc.stdin.write(b"g")
    proc.stdin.flush()
    out = wait_for(proc, b"ALIVE\n").decode()
    status = int(re.search(r"STATUS=0x([0-9a-f]{8})", out).group(1), 16)  # type: ignore[union-attr]
    assert status == 0x4F, f"status {status:#x}: want DRIVER_OK|...|DEVICE_NEEDS_RESET"
    assert proc.wait(TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""

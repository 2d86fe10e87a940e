"""Exits to addresses no device claims are answered in C by the vCPU's run loop
(``svmm_vcpu_run``) unless ``STRATOVMM_FASTPATH=0``; the guest must see the same values
either way — a PIO read floats high (all ones, ``rep ins`` too), an MMIO read is zero,
writes vanish — and the same number of accesses is counted."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from stratovmm.fastpath import FASTPATH_ENV
from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.guest import stratovmm_command

# Port 0x99 and physical 0xc0000000 hold no device on our machine; every value read is
# printed, then 1000 more writes and reads to each, then the guest resets.
PROBE = """
main:
    xor %eax, %eax
    inb $0x99, %al
    call print_hex_nl
    xor %eax, %eax
    inw $0x99, %ax
    call print_hex_nl
    xor %eax, %eax
    inl $0x99, %eax
    call print_hex_nl
    movl $0, 0x70000
    mov $0x70000, %edi
    mov $3, %ecx
    mov $0x99, %dx
    cld
    rep insb                      /* three items in one exit (or more exits): 00ffffff */
    mov 0x70000, %eax
    call print_hex_nl
    mov $0x55, %al
    outb %al, $0x99
    mov $0x12345678, %eax
    mov 0xc0000000, %eax
    call print_hex_nl
    movl $0xdeadbeef, 0xc0000000
    mov 0xc0000000, %eax
    call print_hex_nl
    mov $1000, %ecx
1:  outb %al, $0x99
    inb $0x99, %al
    mov 0xc0000000, %eax
    movl %eax, 0xc0000000
    loop 1b
    call print_hex_nl             /* the last MMIO read: 00000000 */
    mov $done, %esi
    call print
    call reset
print_hex_nl:
    call print_hex
    mov $0x0a, %al
    call putc
    ret
done: .asciz "done\\n"
"""

EXPECTED = "000000ff\n0000ffff\nffffffff\n00ffffff\n00000000\n00000000\n00000000\ndone\n"


@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_unclaimed_addresses_read_the_same_with_and_without_the_c_loop(
        kvm_available: None, tmp_path: Path, fastpath: str) -> None:
    """Same guest-visible values and the same counts from the C loop and from Python."""
    elf = build_pvh_guest_or_skip(tmp_path, "probe", PROBE)
    env = {**os.environ, FASTPATH_ENV: fastpath, "STRATOVMM_LOG_LEVEL": "info"}
    env.pop("STRATOVIRT_LOG_LEVEL", None)
    proc = subprocess.run([*stratovmm_command(), "-kernel", str(elf), "-serial", "stdio"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc
    assert proc.stdout.replace("\r", "") == EXPECTED
    # 1 + 1 + 1 + 3 + 1 + 2000 PIO items; 1 + 2 + 2000 MMIO accesses
    counts = re.search(r"vCPU 0: (\d+) PIO and (\d+) MMIO accesses to addresses no device"
                       r" claims \((\d+) answered by the C run loop\)", proc.stderr)
    assert counts is not None, proc.stderr
    assert (int(counts[1]), int(counts[2])) == (2007, 2003)
    assert int(counts[3]) == (2007 + 2003 if fastpath == "1" else 0)

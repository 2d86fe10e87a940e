"""Tiny guests, assembled inside the tests, run on real vCPUs: the UART reaches the host's
stdout, the i8042 reset and a triple fault end the VM with status 0, two or more vCPUs
come up through INIT/SIPI, and an emulation failure is reported with the registers."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratovmm.kvm import Kvm
from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.guest import stratovmm_command

TIMEOUT = 60
PV_IPI = 1 << 11                    # KVM_FEATURE_PV_SEND_IPI in CPUID.40000001H:EAX


@dataclass
class Run:
    """One finished VMM process."""

    rc: int
    out: str
    err: str


def run_vmm(*args: str, log_level: str | None = None) -> Run:
    """Run ``stratovmm ARGS`` to completion (stdin /dev/null)."""
    env = dict(os.environ)
    env.pop("STRATOVIRT_LOG_LEVEL", None)
    if log_level is None:
        env.pop("STRATOVMM_LOG_LEVEL", None)
    else:
        env["STRATOVMM_LOG_LEVEL"] = log_level
    proc = subprocess.run([*stratovmm_command(), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    return Run(proc.returncode, proc.stdout, proc.stderr)


# Prints a greeting, the command line and the end of RAM from hvm_start_info, then resets.
HELLO = """
main:
    mov %ebx, %ebp                /* hvm_start_info */
    mov $hello, %esi
    call print
    mov 24(%ebp), %esi            /* cmdline_paddr */
    call print
    mov $ram_end, %esi
    call print
    mov 48(%ebp), %ecx            /* memmap_entries */
    mov 40(%ebp), %edi            /* memmap_paddr */
    dec %ecx
    imul $24, %ecx
    add %ecx, %edi                /* the last e820 entry */
    mov (%edi), %eax
    add 8(%edi), %eax
    call print_hex
    mov $newline, %esi
    call print
    call reset
hello:   .asciz "Hello from a tiny guest\\ncmdline="
ram_end: .asciz "\\nram-end=0x"
newline: .asciz "\\n"
"""

# Writes to the UART's data port without polling its status (no UART may be there).
BLIND_WRITE = """
main:
    mov $0x3f8, %dx
    mov $'X', %al
    outb %al, %dx
    call reset
"""

# Resets through the i8042 without a word.
SILENT_RESET = """
main:
    call reset
"""

# An IDT with no entries, then an invalid opcode: #UD -> #GP -> #DF -> shutdown.
TRIPLE_FAULT = """
main:
    lidt empty_idt
    ud2
1:  hlt
    jmp 1b
    .align 8
empty_idt: .word 0
    .long 0
"""

# Code fetched from the MMIO hole, where there is neither RAM nor a device.
FETCH_FROM_MMIO = """
main:
    mov $0xd0000000, %eax
    jmp *%eax
"""

# Prints CPUID.40000001H:EAX, the KVM paravirtual feature bits the guest was given, then resets.
KVM_FEATURE_BITS = """
main:
    mov $prefix, %esi
    call print
    mov $0x40000001, %eax
    xor %ecx, %ecx
    cpuid
    call print_hex
    mov $newline, %esi
    call print
    call reset
prefix:  .asciz "kvm-features=0x"
newline: .asciz "\\n"
"""

# The BSP wakes every AP with INIT + SIPI (all-excluding-self) into a real-mode trampoline
# it copies to 0x40000; each AP prints its APIC id (CPUID.1:EBX[31:24]) under a spinlock
# and counts itself.  The BSP waits (bounded by the TSC) for as many APs as the first
# character of the command line says, then resets.
SMP = """
    .set TRAMPOLINE, 0x40000
    .set COUNT, TRAMPOLINE + 0xff0
    .set LOCK, TRAMPOLINE + 0xff8
main:
    mov 24(%ebx), %eax            /* cmdline_paddr: "N", the number of vCPUs */
    movzbl (%eax), %edi
    sub $'1', %edi                /* APs expected */
    movl $0x1ff, 0xfee000f0       /* LAPIC spurious vector register: software enable */
    mov $1, %eax
    cpuid
    shr $24, %ebx
    add $'0', %bl
    movb %bl, bsp_digit
    mov $bsp_msg, %esi
    call print
    mov $trampoline, %esi         /* copy the trampoline below 1 MiB */
    mov $TRAMPOLINE, %edx
    mov $(trampoline_end - trampoline), %ecx
1:  movb (%esi), %al
    movb %al, (%edx)
    inc %esi
    inc %edx
    loop 1b
    movl $0, COUNT
    movl $0, LOCK
    movl $0x000c4500, 0xfee00300  /* INIT, all excluding self */
2:  testl $0x1000, 0xfee00300     /* wait for delivery */
    jnz 2b
    movl $0x000c4640, 0xfee00300  /* STARTUP, vector 0x40 -> 0x40000 */
    rdtsc
    mov %edx, %ebp
3:  cmpl %edi, COUNT
    je 4f
    pause
    rdtsc
    sub %ebp, %edx
    cmp $4, %edx                  /* about 2^34 TSC ticks */
    jb 3b
    mov $timeout_msg, %esi
    call print
    mov COUNT, %eax
    call print_hex
    mov $newline, %esi
    call print
    call reset
4:  mov $done_msg, %esi
    call print
    mov COUNT, %eax
    call print_hex
    mov $newline, %esi
    call print
    call reset
bsp_msg:     .ascii "BSP apic="
bsp_digit:   .asciz "?\\n"
done_msg:    .asciz "APs up: 0x"
timeout_msg: .asciz "AP-TIMEOUT count=0x"
newline:     .asciz "\\n"

    .code16
trampoline:                       /* runs at 4000:0000 in real mode */
    cli
    mov %cs, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov $1, %al
5:  xchgb %al, (LOCK - TRAMPOLINE)
    test %al, %al
    jz 6f
    pause
    mov $1, %al
    jmp 5b
6:  mov $(ap_msg - trampoline), %si
    call ap_print
    mov %bl, %al                  /* APIC id, two hex digits */
    shr $4, %al
    call ap_hex
    mov %bl, %al
    call ap_hex
    mov $(ap_newline - trampoline), %si
    call ap_print
    lock incl (COUNT - TRAMPOLINE)
    movb $0, (LOCK - TRAMPOLINE)
7:  hlt
    jmp 7b
ap_hex:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe ap_putc
    add $('a' - '0' - 10), %al
ap_putc:
    push %ax
    mov $0x3fd, %dx
8:  inb %dx, %al
    test $0x20, %al
    jz 8b
    pop %ax
    mov $0x3f8, %dx
    outb %al, %dx
    ret
ap_print:
    lodsb
    test %al, %al
    jz 9f
    call ap_putc
    jmp ap_print
9:  ret
ap_msg:     .asciz "AP apic=0x"
ap_newline: .asciz "\\n"
trampoline_end:
    .code32
"""


@pytest.fixture
def guests(kvm_available: None, tmp_path: Path) -> Path:
    """A directory to assemble guests in (skips without /dev/kvm)."""
    return tmp_path


def test_uart_output_reaches_stdout(guests: Path) -> None:
    """UART bytes reach stdout; the guest sees -append and -m in hvm_start_info; exit 0."""
    elf = build_pvh_guest_or_skip(guests, "hello", HELLO)
    run = run_vmm("-m", "512M", "-kernel", str(elf), "-serial", "stdio", "-append",
                  "tiny.guest=1", "quiet")
    assert run.rc == 0, run
    lines = run.out.replace("\r", "").splitlines()
    assert lines[0] == "Hello from a tiny guest", run.out
    assert lines[1] == "cmdline=tiny.guest=1 quiet"
    assert lines[2] == "ram-end=0x20000000", "the last e820 RAM entry ends at 512 MiB"


def test_uart_output_from_json_config(guests: Path) -> None:
    """The same guest configured from a JSON file ("serial": {"stdio": true})."""
    elf = build_pvh_guest_or_skip(guests, "hello", HELLO)
    config = guests / "vm.json"
    config.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(elf), "boot_args": "from-json"},
        "machine-config": {"mem_size": 384 << 20},
        "serial": {"stdio": True},
    }))
    run = run_vmm("-config", str(config))
    assert run.rc == 0, run
    assert "cmdline=from-json\n" in run.out.replace("\r", "")
    assert "ram-end=0x18000000" in run.out


def test_without_serial_the_guest_output_is_dropped(guests: Path) -> None:
    """Without -serial, writes to 0x3f8 go nowhere and the guest still resets; with it, out."""
    elf = build_pvh_guest_or_skip(guests, "blind", BLIND_WRITE)
    assert run_vmm("-kernel", str(elf)) == Run(0, "", "")
    assert run_vmm("-kernel", str(elf), "-serial", "stdio") == Run(0, "X", "")


def test_i8042_reset_exits_zero(guests: Path) -> None:
    """0xFE to port 0x64 ends the VM with status 0 and an info log line naming the reset."""
    elf = build_pvh_guest_or_skip(guests, "reset", SILENT_RESET)
    run = run_vmm("-kernel", str(elf), log_level="info")
    assert run.rc == 0, run
    assert "guest-reset" in run.err and "i8042 reset" in run.err, run.err


def test_i8042_reset_quiet_by_default(guests: Path) -> None:
    """At the default log level (error) a clean reset prints nothing at all."""
    elf = build_pvh_guest_or_skip(guests, "reset", SILENT_RESET)
    run = run_vmm("-kernel", str(elf))
    assert (run.rc, run.out, run.err) == (0, "", "")


def test_triple_fault_exits_zero(guests: Path) -> None:
    """A triple fault (KVM_EXIT_SHUTDOWN) ends the VM with status 0 and a log line."""
    elf = build_pvh_guest_or_skip(guests, "triple", TRIPLE_FAULT)
    run = run_vmm("-kernel", str(elf), log_level="info")
    assert run.rc == 0, run
    assert "guest-reset" in run.err and "triple fault" in run.err, run.err


@pytest.mark.parametrize("vcpus", [2, 4])
def test_application_processors_wake_up(guests: Path, vcpus: int) -> None:
    """INIT + SIPI wake every AP into a real-mode trampoline; each prints its APIC id."""
    elf = build_pvh_guest_or_skip(guests, "smp", SMP)
    run = run_vmm("-smp", str(vcpus), "-kernel", str(elf), "-serial", "stdio", "-append",
                  str(vcpus))
    assert run.rc == 0, run
    lines = run.out.replace("\r", "").splitlines()
    assert lines[0] == "BSP apic=0", run.out
    assert sorted(line for line in lines if line.startswith("AP apic=")) == [
        f"AP apic=0x{i:02x}" for i in range(1, vcpus)], run.out
    assert lines[-1] == f"APs up: 0x{vcpus - 1:08x}", run.out


def test_single_vcpu_has_no_application_processor(guests: Path) -> None:
    """With -smp 1 nobody answers the SIPI (the SMP test's success is not a given)."""
    elf = build_pvh_guest_or_skip(guests, "smp", SMP)
    run = run_vmm("-smp", "1", "-kernel", str(elf), "-serial", "stdio", "-append", "1")
    assert run.rc == 0, run
    assert "AP apic" not in run.out
    assert "APs up: 0x00000000" in run.out


def test_emulation_failure_is_reported(guests: Path) -> None:
    """An emulation failure (code in the MMIO hole) exits non-zero with the registers."""
    elf = build_pvh_guest_or_skip(guests, "mmio_fetch", FETCH_FROM_MMIO)
    run = run_vmm("-kernel", str(elf))
    assert run.rc != 0, run
    assert "internal error" in run.err.lower(), run.err
    assert "rip=0xd0000000" in run.err, run.err
    assert "Traceback" not in run.err


def kvm_feature_bits(run: Run) -> int:
    """The EAX the tiny guest read from CPUID 0x40000001."""
    assert run.rc == 0, run
    (line,) = [x for x in run.out.splitlines() if x.startswith("kvm-features=0x")]
    return int(line.split("=0x")[1], 16)


def test_cpu_option_clears_kvm_feature_bits_the_guest_reads(guests: Path,
                                                             tmp_path: Path) -> None:
    """-cpu host,kvm-pv-ipi=off (and its JSON form) clears exactly bit 11 (PV_SEND_IPI) of the
    CPUID leaf the guest reads; without -cpu the guest reads KVM's own offer."""
    kvm = Kvm()
    try:
        offered = next(e.eax for e in kvm.supported_cpuid() if e.function == 0x40000001)
    finally:
        os.close(kvm.fd)
    if not offered & PV_IPI:
        pytest.skip("this KVM does not offer PV_SEND_IPI")
    elf = build_pvh_guest_or_skip(guests, "kvm_features", KVM_FEATURE_BITS)
    base = ("-kernel", str(elf), "-serial", "stdio")
    assert kvm_feature_bits(run_vmm(*base)) == offered
    assert kvm_feature_bits(run_vmm(*base, "-cpu", "host,kvm-pv-ipi=off")) == offered & ~PV_IPI
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"machine-config": {"cpu": {"model": "host",
                                                             "kvm-pv-ipi": False,
                                                             "kvm-pv-eoi": False}}}))
    assert kvm_feature_bits(run_vmm(*base, "-config", str(config))) == offered & ~(
        PV_IPI | 1 << 6)

"""Tiny PVH guests for the kvm tier, assembled with the system gcc (no nasm).

A guest is a 32-bit ELF with a Xen ``PHYS32_ENTRY`` note, linked at 1 MiB.  The
loader enters it in 32-bit protected mode, paging off, with ``%ebx`` pointing at
``hvm_start_info`` and no stack; the prologue sets one up below the EBDA.  A small
library gives every guest ``putc`` (``%al``), ``print`` (``%esi`` → NUL-terminated
string), ``print_hex`` (``%eax``) and ``reset`` (i8042 0xFE on port 0x64).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

STACK_TOP = 0x80000           # free low RAM: above the loader's structures, below the EBDA

PROLOGUE = f"""
    .section .note.Xen, "a"
    .align 4
    .long 4, 4, 18            /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start
    .text
    .code32
    .globl _start
_start:
    mov ${STACK_TOP:#x}, %esp
    jmp main
"""

LIBRARY = """
    .code32
putc:                         /* %al -> COM1, once the transmitter holding register is empty */
    push %edx
    push %eax
    mov $0x3fd, %dx
1:  inb %dx, %al
    test $0x20, %al
    jz 1b
    pop %eax
    mov $0x3f8, %dx
    outb %al, %dx
    pop %edx
    ret
print:                        /* %esi: NUL-terminated string */
    push %eax
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %eax
    ret
print_hex:                    /* %eax as 8 hex digits */
    push %ecx
    push %ebx
    mov %eax, %ebx
    mov $8, %ecx
1:  rol $4, %ebx
    mov %ebx, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    call putc
    loop 1b
    pop %ebx
    pop %ecx
    ret
reset:                        /* i8042 "pulse reset line" */
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
hexdigits: .ascii "0123456789abcdef"
"""

LINKER_SCRIPT = """
ENTRY(_start)
SECTIONS {
    . = 0x100000;
    .text : { *(.text) *(.rodata*) *(.data) *(.bss) }
    .note.Xen : { *(.note.Xen) }
    /DISCARD/ : { *(.note.gnu*) *(.comment) *(.eh_frame) }
}
"""


def build_guest(directory: Path, name: str, body: str) -> Path:
    """Assemble ``body`` (which defines ``main``) with the prologue and library into
    ``directory/name.elf``; skip the test when gcc cannot build 32-bit objects."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    source = directory / f"{name}.S"
    script = directory / "guest.ld"
    elf = directory / f"{name}.elf"
    source.write_text(PROLOGUE + body + LIBRARY)
    script.write_text(LINKER_SCRIPT)
    proc = subprocess.run(
        [gcc, "-m32", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none",
         "-Wl,-z,noexecstack", "-Wl,-T," + str(script), "-o", str(elf), str(source)],
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        if "-m32" in proc.stderr or "elf_i386" in proc.stderr:
            pytest.skip(f"gcc cannot build 32-bit guests: {proc.stderr.strip()}")
        raise AssertionError(f"assembling {name} failed:\n{proc.stderr}")
    return elf

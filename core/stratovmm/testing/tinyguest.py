"""Tiny PVH guests for plugin tests, assembled with the system gcc in a fraction of a second.

A guest is a 32-bit ELF with a Xen ``PHYS32_ENTRY`` note, linked at 1 MiB.  The
loader enters it in 32-bit protected mode with paging off (so a guest physical
address is used as is: ``movb $123, 0xd1000000`` reaches an MMIO device there),
``%ebx`` pointing at ``hvm_start_info`` and no stack; the prologue sets one up
below the EBDA.  The body defines ``main``; a small library gives it ``putc``
(``%al`` to the 8250 at 0x3f8), ``print`` (``%esi``: NUL-terminated string),
``print_hex`` (``%eax``), ``reset`` (i8042 0xFE on port 0x64: the VMM exits 0)
and ``halt`` (interrupts off, ``hlt`` for ever: the VM stays up until QMP
``quit`` or a signal ends it).

Booting one takes about 0.2 s, against 25 s or more for the Linux test guest,
so tests that only need "the guest touched my device" use these.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
halt:                         /* stay up, doing nothing, until the VMM ends the VM */
    cli
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


class TinyGuestUnavailable(RuntimeError):
    """This host cannot assemble 32-bit guests (no gcc, or no 32-bit support)."""


def build_pvh_guest(directory: Path, name: str, body: str) -> Path:
    """Assemble ``body`` (GNU as, AT&T syntax; it defines ``main``) with the prologue and
    the library into ``directory/NAME.elf``.

    Raises ``TinyGuestUnavailable`` when gcc is missing or cannot emit 32-bit code (a
    test should skip), ``RuntimeError`` with gcc's message when ``body`` does not
    assemble (a test should fail).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise TinyGuestUnavailable("gcc is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.S"
    script = directory / f"{name}.ld"
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
            raise TinyGuestUnavailable(f"gcc cannot build 32-bit guests: {proc.stderr.strip()}")
        raise RuntimeError(f"assembling tiny guest {name} failed:\n{proc.stderr}")
    return elf

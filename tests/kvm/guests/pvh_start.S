/* PVH entry for the freestanding test guests: 32-bit protected mode, paging off,
 * %ebx = struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
.section .note.Xen, "a"
.align 4
.long 4                 /* namesz */
.long 4                 /* descsz */
.long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.long _start

.text
.code32
.globl _start
_start:
    cli
    mov $stack_top, %esp
    push %ebx
    call guest_main
1:  hlt
    jmp 1b

.bss
.align 16
.space 16384
stack_top:

.section .note.GNU-stack, "", @progbits

/*
 * PVH entry of the pump guests: 32-bit protected mode, paging off, %ebx = hvm_start_info
 * (xen/include/public/arch-x86/hvm/start_info.h).  It switches to long mode with the first
 * 4 GiB identity-mapped (2 MiB pages, user-accessible, so RAM and every MMIO window are
 * reachable from ring 3 at their physical addresses), loads a GDT with ring-0 and ring-3
 * segments, a 64-bit TSS whose I/O bitmap allows every port, and an IDT, and calls
 * guest_main(start_info) in ring 0.
 *
 * Why ring 3: on a kvm-pvm host the guest's supervisor code is instruction-emulated,
 * user code runs natively.  enter_user(fn, stack) switches to ring 3 (IOPL 0: ports
 * are reached through the TSS bitmap), so a pump's inner loop runs at native speed.
 *
 * Exceptions (vectors 0-31) call fault(frame) and reset; interrupts are counted in
 * irq_count and acknowledged (8259 and local APIC EOI), although the guest runs with
 * interrupts off and asks its devices for none.
 */
#define KCODE 0x08
#define KDATA 0x10
#define UCODE 0x18
#define UDATA 0x20
#define TSSSEL 0x28
#define IOPB_BYTES 8192

.section .note.Xen, "a"
.align 4
.long 4, 4, 18                      /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.long _start

.text
.code32
.globl _start
_start:
    cli
    mov %ebx, %esi                  /* start_info, kept for guest_main */
    mov $kstack_top, %esp
    /* pml4[0] -> pdpt; pdpt[i] -> pd + 4K*i; pd[k] = 2M*k | PS|US|RW|P */
    mov $pdpt + 7, %eax
    mov %eax, pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $pd + 7, %eax
    mov %eax, pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x87, %eax
    mov %eax, pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_ptr
    ljmp $KCODE, $long_mode

.code64
long_mode:
    mov $KDATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov %esi, %r12d
    call load_tss
    call load_idt
    mov %r12d, %edi
    call guest_main
    jmp reset

/* The TSS descriptor (16 bytes at TSSSEL): base = tss, limit covers the I/O bitmap and its
 * terminating 0xff byte (Intel SDM vol. 3 §8.2.3, §19.5.2). */
load_tss:
    mov $tss, %rax
    mov $104 + IOPB_BYTES, %rcx     /* limit 15:0 */
    mov %rax, %rdx
    and $0xffff, %rdx
    shl $16, %rdx
    or %rdx, %rcx                   /* base 15:0 */
    mov %rax, %rdx
    shr $16, %rdx
    and $0xff, %rdx
    shl $32, %rdx
    or %rdx, %rcx                   /* base 23:16 */
    mov $0x89, %rdx                 /* present, 64-bit TSS (available) */
    shl $40, %rdx
    or %rdx, %rcx
    mov %rax, %rdx
    shr $24, %rdx
    shl $56, %rdx
    or %rdx, %rcx                   /* base 31:24 */
    mov %rcx, gdt + TSSSEL
    movq $0, gdt + TSSSEL + 8
    movq $kstack_top, tss + 4       /* rsp0 */
    movw $104, tss + 102            /* I/O map base: right after the TSS; all ports allowed */
    movb $0xff, tss + 104 + IOPB_BYTES
    mov $TSSSEL, %ax
    ltr %ax
    ret

/* 256 interrupt gates (DPL 0) to the stubs, 16 bytes apart. */
load_idt:
    xor %ecx, %ecx
3:  mov %rcx, %rax
    shl $4, %rax
    add $stubs, %rax
    mov %rax, %rdx
    and $0xffff, %rdx               /* offset 15:0 */
    or $(KCODE << 16), %rdx
    mov $0x8E, %r8                  /* present, DPL 0, interrupt gate */
    shl $40, %r8
    or %r8, %rdx
    mov %rax, %r8
    shr $16, %r8
    shl $48, %r8
    or %r8, %rdx                    /* offset 31:16 */
    mov %rcx, %r9
    shl $4, %r9
    mov %rdx, idt(%r9)
    movq $0, idt + 8(%r9)           /* offset 63:32 = 0 */
    inc %ecx
    cmp $256, %ecx
    jne 3b
    lidt idt_ptr
    ret

/* void enter_user(void (*fn)(void), uint64_t stack_top): iretq to ring 3, interrupts off. */
.globl enter_user
enter_user:
    mov $UDATA | 3, %ax
    mov %ax, %ds
    mov %ax, %es
    pushq $UDATA | 3
    push %rsi
    pushq $0x2                      /* RFLAGS: IF = 0, IOPL = 0 */
    pushq $UCODE | 3
    push %rdi
    iretq

.globl reset
reset:
    mov $0xfe, %al                  /* i8042: pulse the reset line */
    out %al, $0x64
4:  jmp 4b

.align 16
stubs:
.set vector, 0
.rept 256
    .align 16
    pushq $vector
    jmp common_stub
.set vector, vector + 1
.endr

common_stub:
    push %rax
    mov 8(%rsp), %rax
    cmp $32, %rax
    jb exception
    lock incq irq_count
    mov $0x20, %al                  /* 8259 EOI (both controllers), then local APIC EOI */
    out %al, $0xa0
    out %al, $0x20
    mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rax
    add $8, %rsp
    iretq
exception:
    mov $KDATA, %ax
    mov %ax, %ds
    mov %ax, %es
    lea 8(%rsp), %rdi               /* vector, then the CPU's frame */
    and $-16, %rsp
    call fault
    jmp reset

.data
.align 16
gdt:
    .quad 0
    .quad 0x00209A0000000000        /* KCODE: 64-bit, DPL 0 */
    .quad 0x00CF92000000FFFF        /* KDATA */
    .quad 0x0020FA0000000000        /* UCODE: 64-bit, DPL 3 */
    .quad 0x00CFF2000000FFFF        /* UDATA: DPL 3 */
    .quad 0, 0                      /* TSS, filled by load_tss */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
idt_ptr:
    .word 4095
    .quad idt
.globl irq_count
irq_count:
    .quad 0

.bss
.align 4096
pml4: .space 4096
pdpt: .space 4096
pd:   .space 16384
idt:  .space 4096
tss:  .space 104 + IOPB_BYTES + 8
.align 16
.space 16384
kstack_top:

.section .note.GNU-stack, "", @progbits

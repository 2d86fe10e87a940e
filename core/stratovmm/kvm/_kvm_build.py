"""cffi (API mode) builder for the KVM bindings, ``stratovmm.kvm._kvm``.

The C compiler reads ``<linux/kvm.h>``: every struct below is declared
*partially* (``...;``) so cffi takes the real offsets and sizes from the
header, and every ``#define X ...`` takes its value from the header, so no
layout or ioctl number is ever copied by hand.  The only C we add are typedefs
naming the anonymous members of ``struct kvm_run``'s exit union, so Python can
reach them without knowing where they sit.

Only ``stratovmm.kvm`` imports this module; the other native pieces are built
beside the part that uses them (``boot/_bootparam_build.py``: the zero page;
``virtio/_barrier_build.py``: the ring's memory barrier; ``host/_sandbox_build.py``:
the seccomp reporter).
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()

_IOCTLS = """
KVM_GET_API_VERSION KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE
KVM_GET_SUPPORTED_CPUID KVM_GET_MSR_INDEX_LIST
KVM_CREATE_VCPU KVM_SET_USER_MEMORY_REGION KVM_SET_TSS_ADDR KVM_SET_IDENTITY_MAP_ADDR
KVM_CREATE_IRQCHIP KVM_CREATE_PIT2 KVM_IRQ_LINE KVM_IRQFD KVM_IOEVENTFD
KVM_RUN KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS KVM_SET_SREGS KVM_GET_FPU KVM_SET_FPU
KVM_SET_MSRS KVM_GET_MSRS KVM_SET_CPUID2 KVM_GET_LAPIC KVM_SET_LAPIC
KVM_GET_MP_STATE KVM_SET_MP_STATE KVM_SET_SIGNAL_MASK
"""

_CONSTANTS = """
KVMIO KVM_API_VERSION KVM_MEM_READONLY KVM_MEM_LOG_DIRTY_PAGES
KVM_EXIT_UNKNOWN KVM_EXIT_EXCEPTION KVM_EXIT_IO KVM_EXIT_HYPERCALL KVM_EXIT_DEBUG
KVM_EXIT_HLT KVM_EXIT_MMIO KVM_EXIT_IRQ_WINDOW_OPEN KVM_EXIT_SHUTDOWN KVM_EXIT_FAIL_ENTRY
KVM_EXIT_INTR KVM_EXIT_NMI KVM_EXIT_INTERNAL_ERROR KVM_EXIT_SYSTEM_EVENT
KVM_EXIT_IO_IN KVM_EXIT_IO_OUT
KVM_SYSTEM_EVENT_SHUTDOWN KVM_SYSTEM_EVENT_RESET KVM_SYSTEM_EVENT_CRASH
KVM_INTERNAL_ERROR_EMULATION KVM_INTERNAL_ERROR_SIMUL_EX KVM_INTERNAL_ERROR_DELIVERY_EV
KVM_CAP_IRQCHIP KVM_CAP_HLT KVM_CAP_USER_MEMORY KVM_CAP_SET_TSS_ADDR KVM_CAP_EXT_CPUID
KVM_CAP_PIT2 KVM_CAP_IRQFD KVM_CAP_IOEVENTFD KVM_CAP_IMMEDIATE_EXIT KVM_CAP_NR_VCPUS
KVM_CAP_MAX_VCPUS KVM_CAP_SET_IDENTITY_MAP_ADDR KVM_CAP_NR_MEMSLOTS KVM_CAP_READONLY_MEM
KVM_CAP_MP_STATE KVM_CAP_ADJUST_CLOCK
KVM_PIT_SPEAKER_DUMMY KVM_IRQFD_FLAG_DEASSIGN
KVM_IOEVENTFD_FLAG_DATAMATCH KVM_IOEVENTFD_FLAG_PIO KVM_IOEVENTFD_FLAG_DEASSIGN
KVM_MP_STATE_RUNNABLE KVM_MP_STATE_UNINITIALIZED KVM_MP_STATE_INIT_RECEIVED
KVM_MP_STATE_HALTED KVM_MP_STATE_SIPI_RECEIVED
KVM_APIC_REG_SIZE KVM_NR_INTERRUPTS
"""

_CDEF = """
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr;
    uint64_t memory_size; uint64_t userspace_addr; ...;
};
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags; ...;
};
struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type; uint8_t present, dpl, db, s, l, g, avl; uint8_t unusable; ...;
};
struct kvm_dtable { uint64_t base; uint16_t limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss; struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8; uint64_t efer; uint64_t apic_base; ...;
};
struct kvm_fpu {
    uint8_t fpr[8][16]; uint16_t fcw; uint16_t fsw; uint8_t ftwx;
    uint16_t last_opcode; uint64_t last_ip; uint64_t last_dp;
    uint8_t xmm[16][16]; uint32_t mxcsr; ...;
};
struct kvm_msr_entry { uint32_t index; uint64_t data; ...; };
struct kvm_msrs { uint32_t nmsrs; struct kvm_msr_entry entries[]; ...; };
struct kvm_msr_list { uint32_t nmsrs; uint32_t indices[]; ...; };
struct kvm_cpuid_entry2 {
    uint32_t function; uint32_t index; uint32_t flags;
    uint32_t eax; uint32_t ebx; uint32_t ecx; uint32_t edx; ...;
};
struct kvm_cpuid2 { uint32_t nent; struct kvm_cpuid_entry2 entries[]; ...; };
struct kvm_lapic_state { char regs[...]; ...; };
struct kvm_pit_config { uint32_t flags; ...; };
struct kvm_irq_level { uint32_t irq; uint32_t level; ...; };
struct kvm_irqfd { uint32_t fd; uint32_t gsi; uint32_t flags; uint32_t resamplefd; ...; };
struct kvm_ioeventfd {
    uint64_t datamatch; uint64_t addr; uint32_t len; int32_t fd; uint32_t flags; ...;
};
struct kvm_mp_state { uint32_t mp_state; ...; };

typedef struct { uint8_t direction; uint8_t size; uint16_t port; uint32_t count;
                 uint64_t data_offset; ...; } svmm_run_io;
typedef struct { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; ...; }
        svmm_run_mmio;
typedef struct { uint32_t suberror; uint32_t ndata; unsigned long long data[16]; ...; }
        svmm_run_internal;
typedef struct { uint32_t type; ...; } svmm_run_system_event;
typedef struct { uint64_t hardware_entry_failure_reason; ...; } svmm_run_fail_entry;

struct kvm_run {
    uint8_t request_interrupt_window; uint8_t immediate_exit; uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection; uint8_t if_flag; uint16_t flags;
    uint64_t cr8; uint64_t apic_base; ...;
};

svmm_run_io *svmm_run_io_of(struct kvm_run *run);
svmm_run_mmio *svmm_run_mmio_of(struct kvm_run *run);
svmm_run_internal *svmm_run_internal_of(struct kvm_run *run);
svmm_run_system_event *svmm_run_system_event_of(struct kvm_run *run);
svmm_run_fail_entry *svmm_run_fail_entry_of(struct kvm_run *run);

int ioctl(int fd, unsigned long request, ...);
"""

_SOURCE = """
#include <sys/ioctl.h>
#include <linux/kvm.h>

#define SVMM_MEMBER(m) __typeof__(((struct kvm_run *)0)->m)
typedef SVMM_MEMBER(io) svmm_run_io;
typedef SVMM_MEMBER(mmio) svmm_run_mmio;
typedef SVMM_MEMBER(internal) svmm_run_internal;
typedef SVMM_MEMBER(system_event) svmm_run_system_event;
typedef SVMM_MEMBER(fail_entry) svmm_run_fail_entry;

static svmm_run_io *svmm_run_io_of(struct kvm_run *r) { return &r->io; }
static svmm_run_mmio *svmm_run_mmio_of(struct kvm_run *r) { return &r->mmio; }
static svmm_run_internal *svmm_run_internal_of(struct kvm_run *r) { return &r->internal; }
static svmm_run_system_event *svmm_run_system_event_of(struct kvm_run *r)
{ return &r->system_event; }
static svmm_run_fail_entry *svmm_run_fail_entry_of(struct kvm_run *r) { return &r->fail_entry; }
"""


def _defines(names: str) -> str:
    return "".join(f"#define {name} ...\n" for name in names.split())


ffibuilder.cdef(_CDEF + _defines(_IOCTLS) + _defines(_CONSTANTS))
ffibuilder.set_source("stratovmm.kvm._kvm", _SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

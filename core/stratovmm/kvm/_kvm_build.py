"""cffi (API mode) builder for the KVM bindings, ``stratovmm.kvm._kvm``.

The C compiler reads ``<linux/kvm.h>``: every struct below is declared
*partially* (``...;``) so cffi takes the real offsets and sizes from the
header, and every ``#define X ...`` takes its value from the header, so no
layout or ioctl number is ever copied by hand.  The C we add: typedefs naming
the anonymous members of ``struct kvm_run``'s exit union, so Python can reach
them without knowing where they sit, and ``svmm_vcpu_run`` (``_RUN_LOOP``), the
vCPU's KVM_RUN loop, which answers exits to addresses no device claims without
returning to Python.

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

#define SVMM_MAX_WINDOWS ...
struct svmm_regs {
    uint32_t magic; uint32_t version; uint32_t device_id; uint32_t vendor_id;
    uint32_t interrupt_status;
};
struct svmm_windows {
    uint32_t seq; uint32_t count; uint64_t base[...]; uint64_t end[...];
    struct svmm_regs *regs[...]; ...;
};
struct svmm_exit_counts { uint64_t pio; uint64_t mmio; };
int svmm_unclaimed(const struct svmm_windows *t, uint64_t addr);
int svmm_lookup(const struct svmm_windows *t, uint64_t addr, uint64_t *offset,
                struct svmm_regs **regs);
int svmm_mmio_register(struct svmm_regs *regs, uint64_t offset, uint32_t len,
                       uint8_t is_write, uint8_t *data);
void svmm_status_or(uint32_t *cell, uint32_t bits);
int svmm_vcpu_run(int fd, struct kvm_run *run, size_t run_size, struct svmm_windows *pio,
                  struct svmm_windows *mmio, struct svmm_exit_counts *counts);
"""

# The vCPU's run loop.  A guest touches many addresses no device claims (Linux probes
# legacy ports; port 0x80 is its I/O delay), and each such exit answered in Python costs
# several microseconds of interpreter time.  ``svmm_vcpu_run`` answers those itself, the way
# the Python loop would (a PIO read floats high, an MMIO read is zero, a write is dropped,
# each counted), and the virtio-mmio registers a window gives it (``svmm_regs``: the
# identification registers, and InterruptStatus/InterruptACK, which a driver reads and
# writes on every interrupt), and returns to Python for every other exit.  Which addresses
# are claimed comes from each bus's window table, which Python rewrites under a sequence
# count (odd while it writes); a lookup that races a rewrite, or a table that never fit,
# sends the exit to Python, whose bus lookup is the authority.  With NULL tables it is one
# KVM_RUN.
_RUN_LOOP = """
#include <errno.h>
#include <string.h>

#define SVMM_MAX_WINDOWS 256
/* A virtio-mmio window's registers as C answers them (virtio 1.2 §4.2.2): the
 * identification values, constant for the transport's life, and InterruptStatus, which
 * the device side sets bits in (svmm_status_or) and InterruptACK clears. */
struct svmm_regs {
    uint32_t magic; uint32_t version; uint32_t device_id; uint32_t vendor_id;
    uint32_t interrupt_status;
};
struct svmm_windows {
    uint32_t seq;                   /* odd while Python rewrites the table */
    uint32_t count;
    uint64_t base[SVMM_MAX_WINDOWS];  /* sorted; window i is [base[i], end[i]) */
    uint64_t end[SVMM_MAX_WINDOWS];
    struct svmm_regs *regs[SVMM_MAX_WINDOWS];   /* window i's registers, or NULL */
};
struct svmm_exit_counts { uint64_t pio; uint64_t mmio; };

/* ``addr`` in a consistent snapshot of ``t``: 1 when no window claims it; 0 when window i
 * does (*offset = addr - base[i], *regs = its registers or NULL); -1 when the table is
 * being rewritten or is not in use (the caller then asks Python). */
static int svmm_lookup(const struct svmm_windows *t, uint64_t addr, uint64_t *offset,
                       struct svmm_regs **regs)
{
    uint32_t seq = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
    if (seq & 1)
        return -1;
    uint32_t lo = 0, hi = t->count;
    if (hi > SVMM_MAX_WINDOWS)
        return -1;
    while (lo < hi) {               /* the first window whose end lies above addr */
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->end[mid] <= addr) lo = mid + 1; else hi = mid;
    }
    int unclaimed = lo == t->count || addr < t->base[lo];
    if (!unclaimed) {
        *offset = addr - t->base[lo];
        *regs = t->regs[lo];
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&t->seq, __ATOMIC_RELAXED) != seq)
        return -1;
    return unclaimed;
}

static int svmm_unclaimed(const struct svmm_windows *t, uint64_t addr)
{
    uint64_t offset;
    struct svmm_regs *regs;
    return svmm_lookup(t, addr, &offset, &regs) == 1;
}

/* A register access C answers (VirtioMmioTransport's, the same way): 32-bit reads of
 * MagicValue, Version, DeviceID, VendorID and InterruptStatus (§4.2.2), and the
 * InterruptACK write, which clears the acknowledged bits atomically against the device
 * side setting new ones.  1 when answered, 0 when Python must (any other register, size
 * or offset: the transport counts and logs what a driver may not do). */
static int svmm_mmio_register(struct svmm_regs *regs, uint64_t offset, uint32_t len,
                              uint8_t is_write, uint8_t *data)
{
    uint32_t value;
    if (regs == NULL || len != 4)
        return 0;
    if (is_write) {
        if (offset != 0x064)
            return 0;
        memcpy(&value, data, 4);
        __atomic_fetch_and(&regs->interrupt_status, ~value, __ATOMIC_SEQ_CST);
        return 1;
    }
    switch (offset) {
    case 0x000: value = regs->magic; break;
    case 0x004: value = regs->version; break;
    case 0x008: value = regs->device_id; break;
    case 0x00c: value = regs->vendor_id; break;
    case 0x060: value = __atomic_load_n(&regs->interrupt_status, __ATOMIC_SEQ_CST); break;
    default: return 0;
    }
    memcpy(data, &value, 4);
    return 1;
}

/* InterruptStatus |= bits, atomically against a vCPU's InterruptACK in C. */
static void svmm_status_or(uint32_t *cell, uint32_t bits)
{
    __atomic_fetch_or(cell, bits, __ATOMIC_SEQ_CST);
}

static int svmm_vcpu_run(int fd, struct kvm_run *run, size_t run_size,
                         struct svmm_windows *pio, struct svmm_windows *mmio,
                         struct svmm_exit_counts *counts)
{
    for (;;) {
        if (ioctl(fd, KVM_RUN, 0) < 0)
            return -errno;
        if (pio == NULL || mmio == NULL)
            return (int)run->exit_reason;
        if (run->exit_reason == KVM_EXIT_IO) {
            uint64_t bytes = (uint64_t)run->io.size * run->io.count;
            if (run->io.data_offset > run_size || bytes > run_size - run->io.data_offset
                    || !svmm_unclaimed(pio, run->io.port))
                return KVM_EXIT_IO;
            if (run->io.direction == KVM_EXIT_IO_IN)   /* an undriven ISA bus floats high */
                memset((char *)run + run->io.data_offset, 0xff, bytes);
            counts->pio += run->io.count;
            continue;
        }
        if (run->exit_reason == KVM_EXIT_MMIO) {
            uint64_t offset = 0;
            struct svmm_regs *regs = NULL;
            int found = svmm_lookup(mmio, run->mmio.phys_addr, &offset, &regs);
            if (found == 0 && svmm_mmio_register(regs, offset, run->mmio.len,
                                                 run->mmio.is_write, run->mmio.data))
                continue;
            if (found != 1)
                return KVM_EXIT_MMIO;
            if (!run->mmio.is_write)
                memset(run->mmio.data, 0, sizeof run->mmio.data);
            counts->mmio += 1;
            continue;
        }
        return (int)run->exit_reason;
    }
}
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
ffibuilder.set_source("stratovmm.kvm._kvm", _SOURCE + _RUN_LOOP)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

"""cffi (API mode) builder for ``stratovmm.virtio._barrier``: a full memory barrier.

Notification suppression (virtio 1.2 §2.7.10, §2.7.13) needs the device's store
(the used index, or re-enabling notifications) to be visible before its next load
of the driver's fields; the one reordering x86 allows is exactly a store passing
a later load, so only a full fence (``mfence``) forbids it (QEMU: ``smp_mb()``).
Python has no fence of its own, hence these few lines of C.  Only
``stratovmm.virtio`` imports it.
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("void svmm_full_barrier(void);")
ffibuilder.set_source("stratovmm.virtio._barrier", """
static void svmm_full_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

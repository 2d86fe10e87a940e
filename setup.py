"""Only here for cffi_modules: each native piece is built beside the part that imports it —
the KVM bindings from <linux/kvm.h> (kvm/), the zero page from <asm/bootparam.h> (boot/), the
virtqueue memory barrier and the split ring's per-request loop (virtio/), and the seccomp
SIGSYS reporter (host/)."""

from setuptools import setup

setup(cffi_modules=["core/stratovmm/kvm/_kvm_build.py:ffibuilder",
                     "core/stratovmm/boot/_bootparam_build.py:ffibuilder",
                     "core/stratovmm/virtio/_barrier_build.py:ffibuilder",
                     "core/stratovmm/virtio/_ring_build.py:ffibuilder",
                     "core/stratovmm/host/_sandbox_build.py:ffibuilder"])

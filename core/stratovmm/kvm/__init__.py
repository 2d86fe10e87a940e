"""KVM bindings: the cffi API-mode module ``_kvm`` built from <linux/kvm.h>
(``_kvm_build.py``), and fd wrappers.  Nothing outside this package imports ``_kvm``."""

from __future__ import annotations

from stratovmm.kvm.fds import Kvm, VcpuFd, VmFd, request_number

__all__ = ["Kvm", "VcpuFd", "VmFd", "request_number"]

"""KVM bindings: cffi API-mode module built from <linux/kvm.h>, and fd wrappers."""

from __future__ import annotations

from stratovmm.kvm.fds import Kvm, VcpuFd, VmFd

__all__ = ["Kvm", "VcpuFd", "VmFd"]

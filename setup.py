"""Only here for cffi_modules: the KVM bindings are compiled against <linux/kvm.h>, and the
seccomp SIGSYS reporter is a small C signal handler."""

from setuptools import setup

setup(cffi_modules=["core/stratovmm/kvm/_build.py:ffibuilder",
                     "core/stratovmm/host/_sandbox_build.py:ffibuilder"])

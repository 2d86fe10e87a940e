"""Only here for cffi_modules: the KVM bindings are compiled against <linux/kvm.h>."""

from setuptools import setup

setup(cffi_modules=["core/kvm/_build.py:ffibuilder"])

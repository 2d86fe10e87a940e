"""Only here for cffi_modules: the C handlers for frames (stratovmm_net._fast)."""

from setuptools import setup

setup(cffi_modules=["stratovmm_net/_fast_build.py:ffibuilder"])

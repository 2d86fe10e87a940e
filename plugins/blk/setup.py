"""Only here for cffi_modules: the C handler for reads and writes (stratovmm_blk._fast)."""

from setuptools import setup

setup(cffi_modules=["stratovmm_blk/_fast_build.py:ffibuilder"])

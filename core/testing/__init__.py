"""Helpers for testing StratoVMM and its plugins (shipped for plugin authors).

- ``stratovmm.testing.memory.BytearrayGuestMemory``: guest RAM in a bytearray
- ``stratovmm.testing.virtqueue.MockSplitQueue``: the driver side of a split virtqueue
- ``stratovmm.testing.guest``: find the Linux test guest and boot it in a subprocess
- ``stratovmm.testing.fixtures``: pytest fixtures (registered as a pytest plugin)
"""

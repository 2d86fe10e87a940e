"""Helpers for testing StratoVMM and its plugins (shipped for plugin authors).

- ``stratovmm.testing.memory.BytearrayGuestMemory``: guest RAM in a bytearray
- ``stratovmm.testing.virtqueue.MockSplitQueue``: the driver side of a split virtqueue
- ``stratovmm.testing.harness.DeviceHarness``: a virtio device behind the real virtio-mmio
  transport, driven register by register as a guest driver would, without KVM
- ``stratovmm.testing.spec``: the virtio numbers (status bits, registers, ...) a driver uses
- ``stratovmm.testing.config``: the configuration pipeline, ``--help`` and ``main`` with
  chosen plugins, in-process
- ``stratovmm.testing.dispatch.execute_qmp``: a QMP request through the real dispatcher
- ``stratovmm.testing.qmp.QmpTestClient``: a raw, blocking QMP client
- ``stratovmm.testing.tinyguest``: assemble tiny PVH guests with gcc
- ``stratovmm.testing.vm``: run ``stratovmm`` in a subprocess with a plugin loaded
- ``stratovmm.testing.guest``: find the Linux test guest and boot it in a subprocess
- ``stratovmm.testing.fixtures``: pytest fixtures (registered as a pytest plugin)
"""

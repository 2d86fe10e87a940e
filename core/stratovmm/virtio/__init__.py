"""Virtio 1.2 over MMIO: split virtqueues, the device base class, the transport.

Modules: ``constants`` (spec numbers), ``chain`` (descriptor walk with every
check of virtio 1.2 §2.7), ``queue`` (the split ring, pure, over a
``GuestMemoryProtocol``), ``device`` (``VirtioDevice`` base for plugins),
``mmio`` (the virtio-mmio v2 transport, §4.2.2), ``vhost`` (handing a device's
rings to a vhost-kernel worker).  The machine places
transports in its windows (``stratovmm.machine.slots``).
"""

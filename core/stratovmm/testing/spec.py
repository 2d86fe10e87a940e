"""The numbers of the virtio 1.2 specification, for tests that drive a device as its driver
would: device status bits (§2.1), reserved feature bits (§6), descriptor and ring flags
(§2.7), the virtio-mmio registers and interrupt bits (§4.2.2) and the device ids (§5)::

    from stratovmm.testing import spec as c

    assert harness.read_reg(c.STATUS) & c.STATUS_DEVICE_NEEDS_RESET

(A device model takes the few it needs from ``stratovmm.api``: ``ID_*``, ``F_*``.)
"""

from __future__ import annotations

from stratovmm.virtio.constants import *  # noqa: F403  (the whole table is the point)

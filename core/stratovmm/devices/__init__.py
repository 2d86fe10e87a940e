"""What every device model builds on, virtio or not.

``placement`` (the ``Device`` protocol and what a factory returns: the device
and where the guest finds it), ``regdevice`` (the base for register-window
devices that are not virtio),
``counters`` (the counters every device keeps for ``query-stats``),
``logonce`` (log a fault once per kind, then only count it), ``ratelimit``
(the token bucket behind ``iops=``-style limits and QMP flow control).
Virtio devices build on these through ``stratovmm.virtio``.
"""

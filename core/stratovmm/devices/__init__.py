"""What every device model builds on, virtio or not.

``regdevice`` (the base for register-window devices that are not virtio),
``counters`` (the counters every device keeps for ``query-stats``),
``logonce`` (log a fault once per kind, then only count it), ``ratelimit``
(the token bucket behind ``iops=``-style limits and QMP flow control).
Virtio devices build on these through ``stratovmm.virtio``.
"""

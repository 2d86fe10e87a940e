"""What device models build on, besides ``stratovmm.virtio``.

``placement`` (the ``Device`` protocol and what a factory returns: the device
and where the guest finds it), ``regdevice`` (the base for register-window
devices that are not virtio),
``counters`` (the counters every device keeps for ``query-stats``),
``ratelimit`` (a token bucket for ``iops=``-style limits) and ``vhost``
(handing a virtio device's rings to a vhost-kernel backend).
"""

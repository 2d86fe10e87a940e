"""The QMP monitor (``-api-channel``), as StratoVirt v0.3 serves it.

``server`` (sockets, framing via ``framing``), ``dispatch`` (flow control,
argument checks, one reply per request), ``commands`` (the core's
commands and event schemas), ``cpus`` and ``stats`` (``query-cpus``,
``query-stats``), ``errors`` (QMP error classes) and ``events`` (the VM event
bus that QMP clients and the core subscribe to).
"""

"""The machine: ``MicroVm`` and what it owns.

``microvm`` (the machine and its state machine), ``vcpu`` (vCPU threads),
``vmapi`` (``VmApi``/``BuildContext``: the view of the machine plugins get),
``bus`` (PIO and MMIO address decoding), ``irq`` (interrupt lines),
``devicetable`` (what device factories return: attached, recorded, closed),
``slots`` (the virtio-mmio windows and their IRQs), ``hotplug`` (QMP
``device_add``/``device_del`` through those slots), ``runner`` (build from a
config and run to the end), ``seccomp`` (the rules of the plugins this VM
uses), and the machine's own legacy devices ``i8042`` (the reset line) and
``pvpanic``.
"""

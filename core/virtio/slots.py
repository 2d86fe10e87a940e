"""TEMPORARY placeholder replaced in the virtio step."""
class VirtioSlots:
    def __init__(self, machine): pass
    def reserve_hotplug_slots(self, drivers): pass

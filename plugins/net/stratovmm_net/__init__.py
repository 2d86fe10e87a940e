"""StratoVMM net plugin: virtio-net (virtio 1.2 §5.1) on a host tap device."""

"""StratoVMM balloon plugin: virtio-balloon (virtio 1.2 §5.5), guest pages back to the host."""

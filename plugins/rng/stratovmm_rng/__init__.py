"""StratoVMM rng plugin: virtio-rng (virtio 1.2 §5.4) reading a host entropy file."""

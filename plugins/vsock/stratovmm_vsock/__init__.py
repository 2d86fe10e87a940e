"""StratoVMM vsock plugin: virtio-vsock (virtio 1.2 §5.10) bridged to host unix sockets."""

"""StratoVMM console plugin: virtio-console (virtio 1.2 §5.3) port 0 on a unix socket server."""

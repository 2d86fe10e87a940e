"""A third-party StratoVMM plugin: a one-register PIO device the guest can read its level from."""

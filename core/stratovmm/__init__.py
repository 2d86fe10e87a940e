"""StratoVMM: a microVM monitor on Linux KVM, driven like StratoVirt v0.3."""

__version__ = "0.1.0"

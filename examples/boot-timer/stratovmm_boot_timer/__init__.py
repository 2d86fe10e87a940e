"""StratoVMM boot-timer plugin: the guest writes 123 to an MMIO address when it has booted;
the VMM logs the time since it started and emits the QMP event ``BOOT_TIMER``."""

"""StratoVMM serial plugin: a 16550A UART at 0x3f8 (IRQ 4) bound to stdio."""

"""The x86_64 boot path: memory map, kernel loaders, boot structures, vCPU state."""

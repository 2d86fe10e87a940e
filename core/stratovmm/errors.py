"""The exception tree.

::

    StratoVmmError                 anything the VMM reports itself
    ├── ConfigError                bad user input: names the option or JSON key
    │   └── KernelImageError       -kernel / -initrd file is unusable
    ├── PluginError                a plugin failed to load or registered nonsense
    ├── HotplugError               a device_add / device_del request cannot be served
    ├── HostError                  the host refused a resource (open, mmap, ioctl)
    │   └── KvmError               an ioctl on /dev/kvm or one of its fds failed
    └── GuestError                 the guest broke a protocol; logged and counted,
        └── GuestMemoryError       an address or length outside guest RAM

Guest errors and host errors take different paths: a ``GuestError`` is the
guest's fault and must never stop the VMM (devices catch it, count it and
answer with the spec's error status); a ``HostError`` during setup ends
start-up with a message, and at run time is logged and reported to the guest
as an I/O error.
"""

from __future__ import annotations


class StratoVmmError(Exception):
    """Root of every error the VMM raises on purpose."""


class ConfigError(StratoVmmError):
    """Bad user input; the message names the option or key and the reason."""


class KernelImageError(ConfigError):
    """The kernel or initrd file cannot be booted."""


class PluginError(StratoVmmError):
    """A plugin could not be loaded, or registered something invalid."""


class HotplugError(StratoVmmError):
    """A hot-replace request names no free slot, an unknown device, or a bad backend."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class HostError(StratoVmmError):
    """A host resource could not be obtained or used."""


class KvmError(HostError):
    """An ioctl on a KVM file descriptor failed."""

    def __init__(self, what: str, errno: int) -> None:
        import os

        super().__init__(f"{what}: {os.strerror(errno)} (errno {errno})")
        self.what = what
        self.errno = errno


class GuestError(StratoVmmError):
    """The guest broke a device or memory protocol."""


class GuestMemoryError(GuestError):
    """A guest physical address range is not (wholly) inside guest RAM."""

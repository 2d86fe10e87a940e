"""The exits ``VcpuFd.run()`` returns: small frozen objects, one per reason.

Only ``stratovmm.kvm`` reads ``struct kvm_run``; everything else matches on
these classes.  Reads (``IoIn``, ``MmioRead``) are answered with
``VcpuFd.complete_read(data)`` before the next ``run()``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IoOut:
    """``out`` to ``port``; ``data`` holds ``count`` items of ``size`` bytes (rep outs)."""

    port: int
    size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IoIn:
    """``in`` from ``port``: ``count`` items of ``size`` bytes expected."""

    port: int
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class MmioWrite:
    """A store of ``data`` (1–8 bytes) to guest physical ``addr`` outside RAM."""

    addr: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioRead:
    """A load of ``size`` bytes from guest physical ``addr`` outside RAM."""

    addr: int
    size: int


@dataclass(frozen=True, slots=True)
class Hlt:
    """The vCPU executed ``hlt`` (only seen without an in-kernel LAPIC)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Triple fault (KVM_EXIT_SHUTDOWN): the guest reset itself the hard way."""


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """KVM_EXIT_SYSTEM_EVENT: ``kind`` is ``shutdown``, ``reset``, ``crash`` or a number."""

    kind: str


@dataclass(frozen=True, slots=True)
class InternalError:
    """KVM could not emulate or deliver something; ``data`` is the raw suberror payload."""

    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FailEntry:
    """VM entry failed with the hardware reason."""

    reason: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned EINTR: a kick (pause request) or immediate_exit."""


@dataclass(frozen=True, slots=True)
class UnknownExit:
    """Any other exit reason; fatal for the vCPU."""

    reason: int


VcpuExit = (
    IoOut | IoIn | MmioWrite | MmioRead | Hlt | Shutdown | SystemEvent | InternalError
    | FailEntry | Interrupted | UnknownExit
)

INTERRUPTED = Interrupted()
HLT = Hlt()
SHUTDOWN = Shutdown()

"""The exits ``VcpuFd.run()`` returns: small immutable objects, one class per reason.

They are named tuples rather than frozen dataclasses: a class costs a seventh to
create (eleven of them were 4 ms of every start), and an instance is one
``tuple.__new__`` instead of a ``object.__setattr__`` per field on every exit.
Match them by class (``isinstance``, a dict keyed by ``type``), never by value: as
tuples, two exits of different classes with equal fields compare equal.

Only ``stratovmm.kvm`` reads ``struct kvm_run``; everything else matches on
these classes.  Reads (``IoIn``, ``MmioRead``) are answered with
``VcpuFd.complete_read(data)`` before the next ``run()``.
"""

from __future__ import annotations

from typing import NamedTuple


class IoOut(NamedTuple):
    """``out`` to ``port``; ``data`` holds ``count`` items of ``size`` bytes (rep outs)."""

    port: int
    size: int
    data: bytes


class IoIn(NamedTuple):
    """``in`` from ``port``: ``count`` items of ``size`` bytes expected."""

    port: int
    size: int
    count: int  # type: ignore[assignment]  # hides tuple.count, which nothing here calls


class MmioWrite(NamedTuple):
    """A store of ``data`` (1–8 bytes) to guest physical ``addr`` outside RAM."""

    addr: int
    data: bytes


class MmioRead(NamedTuple):
    """A load of ``size`` bytes from guest physical ``addr`` outside RAM."""

    addr: int
    size: int


class Hlt(NamedTuple):
    """The vCPU executed ``hlt`` (only seen without an in-kernel LAPIC)."""


class Shutdown(NamedTuple):
    """Triple fault (KVM_EXIT_SHUTDOWN): the guest reset itself the hard way."""


class SystemEvent(NamedTuple):
    """KVM_EXIT_SYSTEM_EVENT: ``kind`` is ``shutdown``, ``reset``, ``crash`` or a number."""

    kind: str


class InternalError(NamedTuple):
    """KVM could not emulate or deliver something; ``data`` is the raw suberror payload."""

    suberror: int
    data: tuple[int, ...]


class FailEntry(NamedTuple):
    """VM entry failed with the hardware reason."""

    reason: int


class Interrupted(NamedTuple):
    """KVM_RUN returned EINTR: a kick (pause request) or immediate_exit."""


class UnknownExit(NamedTuple):
    """Any other exit reason; fatal for the vCPU."""

    reason: int


VcpuExit = (
    IoOut | IoIn | MmioWrite | MmioRead | Hlt | Shutdown | SystemEvent | InternalError
    | FailEntry | Interrupted | UnknownExit
)

INTERRUPTED = Interrupted()
HLT = Hlt()
SHUTDOWN = Shutdown()

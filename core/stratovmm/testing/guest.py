"""Boot the Linux test guest under ``stratovmm`` in a subprocess and read what it says.

The guest (``$STRATOVMM_GUEST_DIR``: ``vmlinux``, ``initramfs.cpio``,
``rootfs.ext4``) runs ``/init``, which prints ``GUEST-READY``, runs the command
from ``guest.cmd64=BASE64`` between ``GUEST-CMD-BEGIN`` and ``GUEST-CMD-END rc=N``,
then reboots (``reboot=k`` → i8042 reset → the VMM exits 0).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The kernel command line this project's tests use.  The kvm-pvm workarounds
# (pvm_quirks, noxsave, no_int3_selftest, clearcpuid=...) are needed on hosts
# whose /dev/kvm is kvm-pvm and harmless on VMX/SVM hosts.
HOST_APPEND = (
    "console=ttyS0 reboot=k panic=-1 quiet pvm_quirks noxsave no_int3_selftest "
    "clearcpuid=151,141,308,295,288,534,298,145,158,306,150,297,580"
)

# The -cpu option this project's multi-vCPU boots use.  On kvm-pvm hosts the guest's
# paravirtual IPI hypercall (KVM_FEATURE_PV_SEND_IPI) faults now and then late in an SMP boot
# (a panic in __send_ipi_mask at the VMCALL), under QEMU as well; without the feature Linux
# sends IPIs through the emulated local APIC.  Harmless on VMX/SVM hosts.
HOST_CPU = "host,kvm-pv-ipi=off"

GUEST_TIMEOUT = float(os.environ.get("STRATOVMM_GUEST_TIMEOUT", "240"))

# A guest user process killed by a fault, as the guest's shell or kernel reports it: the
# busybox shell's "Segmentation fault" / "Illegal instruction" / "Bus error", a command's
# status 128+SIGILL/SIGBUS/SIGSEGV, init killed (the kernel panics).  On kvm-pvm hosts guest
# user code hits these now and then under any VMM.
_FAULT = re.compile(r"Segmentation fault|Illegal instruction|Bus error|Attempted to kill init"
                    r"|\bsegfault at\b|(?i:\brc=)(?:132|135|139)\b")
_NOT_GUEST = "Fatal Python error"       # the VMM's own crash is never the guest's


def guest_dir() -> Path | None:
    """``$STRATOVMM_GUEST_DIR`` if it holds a guest kernel, else None."""
    value = os.environ.get("STRATOVMM_GUEST_DIR")
    if value and (Path(value) / "vmlinux").exists():
        return Path(value)
    return None


def stratovmm_command() -> list[str]:
    """How to start the VMM under test: the console script beside the running interpreter
    (the environment under test, even when its ``bin`` is not on ``$PATH``), else the one
    on ``$PATH``, else ``python -m stratovmm``."""
    beside = Path(sys.executable).parent / "stratovmm"
    if os.access(beside, os.X_OK):
        return [str(beside)]
    exe = shutil.which("stratovmm")
    if exe:
        return [exe]
    return [sys.executable, "-m", "stratovmm"]


def cmd_arg(command: str) -> str:
    """A ``guest.cmd64=`` kernel argument running ``command`` in the guest's shell."""
    return "guest.cmd64=" + base64.b64encode(command.encode()).decode()


@dataclass
class GuestRun:
    """The outcome of one boot."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ready(self) -> bool:
        """The guest's /init started."""
        return "GUEST-READY" in self.stdout

    @property
    def command_output(self) -> str:
        """What the guest command printed (between the markers), CRs removed."""
        m = re.search(r"GUEST-CMD-BEGIN\r?\n(.*?)GUEST-CMD-END", self.stdout, re.S)
        return m.group(1).replace("\r", "") if m else ""

    @property
    def command_rc(self) -> int | None:
        """The guest command's exit status."""
        m = re.search(r"GUEST-CMD-END rc=(\d+)", self.stdout)
        return int(m.group(1)) if m else None


def host_fault(text: str) -> str | None:
    """The first line of ``text`` (guest console or a report quoting it) that shows a guest
    user process killed by a fault, or None."""
    for line in text.splitlines():
        if _FAULT.search(line) and _NOT_GUEST not in line:
            return line.strip()
    return None


def boot_args(guest: Path, command: str | None = None, extra_append: str = "",
              smp: int = 1, mem: str = "256M", initrd: bool = True) -> list[str]:
    """The usual command line: kernel, initramfs, serial on stdio, the host's append, and
    with several vCPUs ``-cpu HOST_CPU``."""
    append = HOST_APPEND
    if command is not None:
        append += " " + cmd_arg(command)
    if extra_append:
        append += " " + extra_append
    args = ["-smp", str(smp), "-m", mem, "-kernel", str(guest / "vmlinux"), "-serial", "stdio",
            "-append", append]
    if smp > 1:
        args += ["-cpu", HOST_CPU]
    if initrd:
        args += ["-initrd", str(guest / "initramfs.cpio")]
    return args


def run_guest(args: Sequence[str], timeout: float = GUEST_TIMEOUT,
              env: dict[str, str] | None = None) -> GuestRun:
    """Run ``stratovmm ARGS`` to completion (stdin from /dev/null)."""
    proc = subprocess.run(
        [*stratovmm_command(), *args], stdin=subprocess.DEVNULL, capture_output=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )
    return GuestRun(proc.returncode, proc.stdout.decode(errors="replace"),
                    proc.stderr.decode(errors="replace"))


BOOT_LOCK = "/tmp/stratovmm-boot.lock"


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made if missing) for the block: how test
    processes on one machine (xdist workers, several runs) take turns at something they
    share."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def boot_lock() -> Iterator[None]:
    """Serialise guest boots machine-wide when ``STRATOVMM_BOOT_LOCK`` is set.

    On a shared development machine several test runs may boot guests at
    once; each boot is CPU-bound, so they queue on a lock file instead.
    """
    if not os.environ.get("STRATOVMM_BOOT_LOCK"):
        yield
        return
    with file_lock(BOOT_LOCK):
        yield

"""Helpers for the QMP tests (kvm and linux tiers): a tiny PVH guest that never ends, and
the VMM running a guest in a subprocess with ``-api-channel``, its output read as it
comes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.guest import stratovmm_command
from stratovmm.testing.qmp import QmpTestClient

# A tiny PVH guest that prints "READY" on the 8250 at 0x3f8 and then halts for ever with
# interrupts off, so it stays up until QMP ends it.
LOOP_GUEST = r"""
main:
    mov $ready, %esi
    call print
    call halt
ready: .asciz "READY\n"
"""


def build_loop_guest(directory: Path) -> Path:
    """Assemble the loop guest into ``directory``; returns the ELF (skips without gcc)."""
    return build_pvh_guest_or_skip(directory, "loop-guest", LOOP_GUEST)


class VmProcess:
    """``stratovmm`` running a guest with a QMP socket; stdout collected as it comes."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        """``prefix`` runs the VMM through another command (``ip netns exec NS``)."""
        self.sockdir = tempfile.mkdtemp(prefix="qmpvm-")
        self.socket_path = os.path.join(self.sockdir, "qmp.sock")
        self.proc = subprocess.Popen(
            [*prefix, *stratovmm_command(), *args, "-api-channel", f"unix:{self.socket_path}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})})
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self._stdout),
                             daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self._stderr),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: IO[bytes] | None, into: bytearray) -> None:
        assert stream is not None
        fd = stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            with self._lock:
                into += chunk

    @property
    def stdout(self) -> str:
        """What the VMM (the guest's serial console) printed so far."""
        with self._lock:
            return self._stdout.decode(errors="replace")

    @property
    def stderr(self) -> str:
        """The VMM's stderr so far."""
        with self._lock:
            return self._stderr.decode(errors="replace")

    def wait_stdout(self, text: str, timeout: float = 30.0) -> bool:
        """True once ``text`` appeared on stdout within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout:
                return True
            if self.proc.poll() is not None:
                return text in self.stdout
            time.sleep(0.02)
        return False

    def client(self, timeout: float = 30.0) -> QmpTestClient:
        """A new raw QMP connection (waits for the socket)."""
        return QmpTestClient(self.socket_path, timeout)

    def memory_kib(self, field: str = "VmHWM") -> int:
        """A memory figure of the VMM from /proc (default: peak resident set size)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status (readers drained)."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def close(self) -> None:
        """End the VMM if it still runs and remove the socket directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        shutil.rmtree(self.sockdir, ignore_errors=True)


def loop_guest_args(kernel: Path, *extra: str) -> list[str]:
    """Run the loop guest with its serial output on stdout."""
    return ["-kernel", str(kernel), "-m", "256M", "-serial", "stdio", *extra]

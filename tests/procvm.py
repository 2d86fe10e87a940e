"""Helpers for tests that run ``stratovmm`` as a background process and look at it in /proc.

Tiny PVH guests are assembled here with ``gcc -m32`` (0.2 s to boot, no lock
needed): ``reset`` prints ``X`` and resets through the i8042 (the VMM exits 0),
``loop`` prints ``L`` and halts forever with interrupts off (the VM stays up
until the VMM is told to end).  ``hugetlbfs`` mounts a hugetlbfs with enough
huge pages for a test and undoes both afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.guest import file_lock, stratovmm_command

HUGETLBFS_LOCK = "/tmp/stratovmm-hugetlbfs.lock"

GUESTS = {
    # prints X, then 0xFE on port 0x64: the i8042 reset ends the VM
    "reset": """
main:
    mov $'X', %al
    call putc
    mov $'\\n', %al
    call putc
    call reset
""",
    # prints L, then sleeps in hlt with interrupts off until the VMM stops it
    "loop": """
main:
    mov $'L', %al
    call putc
    mov $'\\n', %al
    call putc
    call halt
""",
}

_BUILT: dict[str, Path] = {}


def tiny_guest(kind: str) -> Path:
    """The ELF of tiny guest ``kind`` (built once per test session)."""
    if kind not in _BUILT:
        out = Path(tempfile.mkdtemp(prefix="stratovmm-tiny-"))
        atexit.register(shutil.rmtree, out, True)  # (ignore_errors)
        _BUILT[kind] = build_pvh_guest_or_skip(out, kind, GUESTS[kind])
    return _BUILT[kind]


def no_core_dumps() -> None:
    """preexec_fn: a process killed by SIGSYS must not leave a core file with guest RAM."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def vmm_command(*args: str) -> list[str]:
    """``stratovmm ARGS``."""
    return [*stratovmm_command(), *args]


@dataclass
class Background:
    """A VMM started with ``start_vmm``; stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        """The VMM's pid."""
        return self.proc.pid

    def stdout(self) -> str:
        """What the VMM wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """What the VMM wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        """Wait until ``text`` is on stdout (fail if the VMM ends first)."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout():
            if self.proc.poll() is not None:
                raise AssertionError(f"VMM exited {self.proc.returncode} before printing {text!r}:"
                                     f" {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from the VMM within {timeout} s")
            time.sleep(0.02)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL if still running (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def start_vmm(args: list[str], workdir: Path, env: dict[str, str] | None = None,
              umask: int = -1) -> Iterator[Background]:
    """Run ``stratovmm ARGS`` in the background for the ``with`` block; killed afterwards.
    ``umask`` (unless -1) is the VMM's umask."""
    out, err = workdir / "vmm.stdout", workdir / "vmm.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(vmm_command(*args), stdin=subprocess.DEVNULL, stdout=fo,
                                stderr=fe, cwd=workdir, env={**os.environ, **(env or {})},
                                preexec_fn=no_core_dumps, umask=umask)
    vmm = Background(proc, out, err)
    try:
        yield vmm
    finally:
        vmm.kill()


@dataclass
class Mapping:
    """One VMA of /proc/PID/smaps."""

    start: int
    end: int
    perms: str
    path: str
    fields: dict[str, str]

    @property
    def size(self) -> int:
        """Bytes mapped."""
        return self.end - self.start

    @property
    def vmflags(self) -> set[str]:
        """The two-letter VmFlags (``sh`` shared, ``dd`` do not dump, ``ht`` hugetlb...)."""
        return set(self.fields.get("VmFlags", "").split())


_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def smaps(pid: int) -> list[Mapping]:
    """Every mapping of ``pid`` with its smaps fields."""
    mappings: list[Mapping] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = _HEADER.match(line)
        if m:
            mappings.append(Mapping(int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                                    m.group(4), {}))
        elif mappings and ":" in line:
            key, value = line.split(":", 1)
            mappings[-1].fields[key] = value.strip()
    return mappings


def guest_ram_mapping(pid: int, size: int) -> Mapping:
    """The one mapping of exactly ``size`` bytes: guest RAM (nothing else in the VMM is as big)."""
    found = [m for m in smaps(pid) if m.size == size]
    assert len(found) == 1, f"expected one {size:#x}-byte mapping, found {found}"
    return found[0]


def meminfo(field: str) -> int:
    """A /proc/meminfo value (kB, or a page count)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        if key == field:
            return int(value.split()[0])
    raise KeyError(field)


@contextlib.contextmanager
def hugetlbfs(directory: Path, size: int) -> Iterator[Path]:
    """Mount hugetlbfs on ``directory`` with room for ``size`` bytes; restore everything after.

    ``vm.nr_hugepages`` is machine-wide: the read-raise-restore runs under a lock file, so
    that two test processes (xdist workers) cannot restore each other's value."""
    if os.geteuid() != 0:
        pytest.skip("mounting hugetlbfs and setting vm.nr_hugepages needs root")
    with file_lock(HUGETLBFS_LOCK):
        yield from _hugetlbfs(directory, size)


def _hugetlbfs(directory: Path, size: int) -> Iterator[Path]:
    knob = Path("/proc/sys/vm/nr_hugepages")
    page_kb = meminfo("Hugepagesize")
    wanted_pages = size // (page_kb * 1024)
    before = int(knob.read_text())
    directory.mkdir(exist_ok=True)
    try:
        knob.write_text(str(before + wanted_pages))
    except OSError as exc:
        pytest.skip(f"cannot set vm.nr_hugepages: {exc}")
    mounted = False
    try:
        if meminfo("HugePages_Free") < wanted_pages:
            pytest.skip(f"the kernel could not reserve {wanted_pages} huge pages")
        proc = subprocess.run(["mount", "-t", "hugetlbfs", "none", str(directory)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount hugetlbfs: {proc.stderr.strip()}")
        mounted = True
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=False)
        knob.write_text(str(before))


FORBIDDEN_PLUGIN_DIR = Path(__file__).parent / "kvm" / "forbidden_plugin"
FORBIDDEN_TRIGGER = "STRATOVMM_TEST_FORBIDDEN"


def install_forbidden_plugin(site: Path) -> dict[str, str]:
    """Make the test plugin ``stratovmm_test_forbidden`` discoverable; returns the env to use.

    A ``*.dist-info`` with an entry point in ``site`` (on ``PYTHONPATH``) is all
    ``importlib.metadata`` and stevedore need: the real ``stratovmm`` command then
    loads the plugin like any installed one.
    """
    info = site / "stratovmm_test_forbidden-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stratovmm-test-forbidden\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[stratovmm.devices]\n"
                                           "test-forbidden = stratovmm_test_forbidden\n")
    path = [str(site), str(FORBIDDEN_PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p)}


def thread_seccomp_modes(pid: int) -> dict[int, int]:
    """``Seccomp:`` of every thread of ``pid`` (0 off, 2 filter)."""
    modes = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        m = re.search(r"^Seccomp:\s+(\d+)", status, re.M)
        if m:
            modes[int(task.name)] = int(m.group(1))
    return modes

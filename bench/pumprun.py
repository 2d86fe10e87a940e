"""Run one VMM on the pump guest and measure the window between its handshake lines.

The guest prints ``PUMP-READY``, waits for a byte on its serial line, pumps, prints
``PUMP-DONE`` the moment its last request completed, waits for a second byte (so the
VMM's threads, the vCPU's too, are all there when they are read), then prints its
``PUMP-END`` report and resets. At ``PUMP-READY`` (before the byte is sent) and at
``PUMP-DONE`` this reads, for the VMM process, the CPU time of every thread (user and
system separately, from ``/proc/PID/task/TID/stat``, and on-CPU time in ns from
``.../schedstat``) and of the whole process (``/proc/PID/stat``: it keeps the time of
threads that have exited, such as QEMU's short-lived aio workers), plus an optional
``probe()`` (e.g. a tap's packet counters).

At ``PUMP-READY`` the vCPU thread is pinned to one host CPU and every other thread of the
VMM to the others (when there are two or more), so the polling guest and the device side
never take each other's CPU: the same for both VMMs.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
# vCPU threads: ours are named vcpuN, QEMU's "CPU N/KVM" (with -name ...,debug-threads=on);
# kvm-* are KVM's own kernel workers listed under the process
VCPU = re.compile(r"vcpu\d+$|CPU \d+/KVM$|kvm-")


@dataclass
class Thread:
    """One thread's CPU seconds: user and system (clock ticks), on-CPU (ns, schedstat)."""

    name: str
    user: float
    system: float
    run: float


@dataclass
class Sample:
    """CPU times at one moment: per thread id, and the process total (user + system)."""

    t: float
    threads: dict[int, Thread]
    process: float
    probe: Any = None

    def vcpu(self) -> tuple[float, float, float]:
        """(user, system, on-CPU) seconds of the vCPU threads."""
        rows = [th for th in self.threads.values() if VCPU.match(th.name)]
        return (sum(r.user for r in rows), sum(r.system for r in rows), sum(r.run for r in rows))


def device_between(a: Sample, b: Sample) -> float:
    """The device side's CPU seconds from ``a`` to ``b``: the on-CPU time of every thread
    but the vCPUs (main loop, iothreads, I/O workers; a thread started since ``a`` counts
    from 0).  If a device thread alive at ``a`` has exited by ``b``, its time is only in
    the process total: then the process's user+system minus the vCPUs' (tick-based)."""
    device = [tid for tid, th in a.threads.items() if not VCPU.match(th.name)]
    if any(tid not in b.threads for tid in device):
        (au, asys, _ar), (bu, bsys, _br) = a.vcpu(), b.vcpu()
        return (b.process - bu - bsys) - (a.process - au - asys)
    return sum(th.run - (a.threads[tid].run if tid in a.threads else 0.0)
               for tid, th in b.threads.items() if not VCPU.match(th.name))


def _stat_fields(path: str) -> tuple[str, list[str]]:
    with open(path) as f:
        stat = f.read()
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def sample(pid: int, probe: Callable[[], Any] | None = None) -> Sample:
    """Read the CPU times of ``pid`` now."""
    t = time.perf_counter()
    _name, fields = _stat_fields(f"/proc/{pid}/stat")
    process = (int(fields[11]) + int(fields[12])) / TICK
    threads: dict[int, Thread] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name, f = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            with open(f"/proc/{pid}/task/{tid}/schedstat") as sched:
                run = int(sched.read().split()[0]) / 1e9
        except OSError:
            continue
        threads[int(tid)] = Thread(name, int(f[11]) / TICK, int(f[12]) / TICK, run)
    return Sample(t, threads, process, probe() if probe else None)


def pin(pid: int) -> None:
    """The vCPU thread(s) on the last CPU we may use, every other thread on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name, _f = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            vcpu = VCPU.match(name) and not name.startswith("kvm-")
            os.sched_setaffinity(int(tid), {cpus[-1]} if vcpu else set(cpus[:-1]))
        except OSError:
            continue          # gone, or a kernel worker that keeps its own CPUs


@dataclass
class PumpRun:
    """What one run showed."""

    output: str = ""
    report: dict[str, str] | None = None
    ready: Sample | None = None
    done: Sample | None = None
    returncode: int | None = None
    problem: str | None = None
    lines: list[str] = field(default_factory=list)


def run_pump(cmd: list[str], timeout: float, probe: Callable[[], Any] | None = None,
             on_go: Callable[[int], None] | None = None, pinned: bool = True) -> PumpRun:
    """Boot ``cmd`` (serial on stdin/stdout), pin its threads (unless not ``pinned``) and
    sample at READY, send the start byte (then call ``on_go(pid)``), sample at DONE,
    collect the END report and wait for the exit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    run = PumpRun()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    break
                continue
            chunk = proc.stdout.read(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                run.lines.append(line)
                _on_line(run, line, proc, probe, on_go, pinned)
        else:
            run.problem = run.problem or f"no exit within {timeout} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sel.close()
    run.returncode = proc.returncode
    run.output = "\n".join(run.lines)
    if run.report is None and run.problem is None:
        run.problem = f"no PUMP-END (exit status {proc.returncode})"
    return run


def _on_line(run: PumpRun, line: str, proc: subprocess.Popen[bytes],
             probe: Callable[[], Any] | None, on_go: Callable[[int], None] | None,
             pinned: bool) -> None:
    if line.startswith("PUMP-READY") and run.ready is None:
        if pinned:
            pin(proc.pid)
        run.ready = sample(proc.pid, probe)
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.flush()
        if on_go is not None:
            on_go(proc.pid)
    elif line.startswith("PUMP-DONE") and run.done is None:
        run.done = sample(proc.pid, probe)
        assert proc.stdin is not None
        proc.stdin.write(b"e")        # the guest reports and resets only after this
        proc.stdin.flush()
    elif line.startswith("PUMP-END "):
        run.report = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    elif line.startswith(("PUMP-ERROR", "PUMP-FAULT", "PUMP-STALL", "PUMP-MISMATCH",
                          "PUMP-SPURIOUS", "PUMP-BAD-STATUS")):
        run.problem = run.problem or line

"""Run the real ``stratovmm`` command in a subprocess with a plugin loaded, for tests.

``VmLauncher.start(*args, plugins=...)`` starts a VM in the background (with a QMP
socket unless told otherwise) and returns a ``RunningVm``: its stdout (the
guest's serial console) and stderr collected as they come, a QMP client, its
exit status.  ``VmLauncher.run`` runs one to completion.

A plugin under test need not be installed: ``PluginSource(name, module, path)``
makes it discoverable by writing a ``*.dist-info`` directory holding its
``stratovmm.devices`` entry point into a scratch directory on the VMM's
``PYTHONPATH`` — all ``importlib.metadata`` and stevedore look at — so the VMM
loads it exactly as it loads an installed plugin.  When an entry point of that
name is already installed (``pip install -e .``), nothing is added.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stratovmm.testing.guest import GuestRun, boot_lock, stratovmm_command
from stratovmm.testing.qmp import QmpTestClient

NAMESPACE = "stratovmm.devices"


@dataclass(frozen=True)
class PluginSource:
    """A plugin to load into the VM: entry point ``name`` = ``module`` (the module with the
    hookimpls), importable from ``path`` (None: already importable)."""

    name: str
    module: str
    path: Path | None = None


def installed_plugins() -> dict[str, str]:
    """Entry point name → module of every installed plugin."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=NAMESPACE)}


def plugin_environment(plugins: Iterable[PluginSource], site: Path) -> dict[str, str]:
    """The environment (``PYTHONPATH``) under which ``stratovmm`` discovers ``plugins``.

    Each plugin not installed under its name gets ``site/<name>.dist-info`` with its
    entry point; ``site`` and its ``path`` go first on ``PYTHONPATH``.  An installed
    plugin is left alone, so the VMM loads the installed copy.
    """
    installed = installed_plugins()
    paths: list[str] = []
    for plugin in plugins:
        if installed.get(plugin.name) == plugin.module:
            continue
        if plugin.path is not None:
            paths.append(str(plugin.path))
        dist = re.sub(r"[^A-Za-z0-9.]+", "_", plugin.name)
        info = site / f"stratovmm_testplugin_{dist}-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\n"
                                       f"Name: stratovmm-testplugin-{dist}\nVersion: 0\n")
        (info / "entry_points.txt").write_text(f"[{NAMESPACE}]\n{plugin.name} = {plugin.module}\n")
        if str(site) not in paths:
            paths.insert(0, str(site))
    inherited = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in [*paths, inherited] if p)}


class RunningVm:
    """A ``stratovmm`` process started by ``VmLauncher.start``."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], qmp_path: Path | None,
                 cwd: Path) -> None:
        self.argv = list(argv)
        self.qmp_path = qmp_path
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._clients: list[QmpTestClient] = []
        self._readers = [threading.Thread(target=self._collect, args=(stream, into), daemon=True)
                         for stream, into in ((self.proc.stdout, self._out),
                                              (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: IO[bytes] | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := os.read(stream.fileno(), 65536):
            with self._lock:
                into += chunk

    @property
    def pid(self) -> int:
        """The VMM's process id."""
        return self.proc.pid

    @property
    def stdout(self) -> str:
        """What the VMM printed on stdout so far (with -serial stdio: the guest console)."""
        with self._lock:
            return self._out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        """What the VMM printed on stderr so far (its log, with -D)."""
        with self._lock:
            return self._err.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0, stream: str = "stdout") -> None:
        """Wait until ``text`` is on ``stream`` (``stdout`` or ``stderr``); fail with what the
        VMM said if it exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while text not in getattr(self, stream):
            if self.proc.poll() is not None and text not in getattr(self, stream):
                self._join_readers()
                if text in getattr(self, stream):
                    return
                raise AssertionError(f"the VMM exited ({self.proc.returncode}) before printing"
                                     f" {text!r}\nstdout: {self.stdout}\nstderr: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on {stream} within {timeout} s\n"
                                     f"stdout: {self.stdout}\nstderr: {self.stderr}")
            time.sleep(0.02)

    def qmp(self, timeout: float = 30.0) -> QmpTestClient:
        """A new QMP connection (the greeting is read; commands work right away)."""
        if self.qmp_path is None:
            raise RuntimeError("this VM was started with qmp=False")
        client = QmpTestClient(str(self.qmp_path), timeout)
        self._clients.append(client)
        return client

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status, once the VMM has ended and its output is read."""
        code = self.proc.wait(timeout)
        self._join_readers()
        return code

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(5)

    def close(self) -> None:
        """End the VMM if it still runs (SIGTERM, then SIGKILL) and close QMP connections."""
        for client in self._clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._join_readers()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass
class VmLauncher:
    """Starts VMs for one test in ``workdir``; ``close`` ends them all."""

    workdir: Path
    vms: list[RunningVm] = field(default_factory=list)
    # unix socket paths are limited to 107 bytes: sockets go in a short directory in /tmp
    sockdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stratovmm-")))

    def _prepare(self, args: Sequence[str], plugins: Iterable[PluginSource],
                 env: dict[str, str] | None, qmp: bool) -> tuple[list[str], dict[str, str],
                                                                 Path | None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **plugin_environment(plugins, self.workdir / "site"),
                    **(env or {})}
        argv = [*stratovmm_command(), *args]
        qmp_path = None
        if qmp:
            qmp_path = self.sockdir / f"qmp{len(self.vms)}.sock"
            argv += ["-api-channel", f"unix:{qmp_path}"]
        return argv, full_env, qmp_path

    def start(self, *args: str, plugins: Iterable[PluginSource] = (),
              env: dict[str, str] | None = None, qmp: bool = True) -> RunningVm:
        """Start ``stratovmm ARGS`` in the background (with ``-api-channel`` when ``qmp``)."""
        argv, full_env, qmp_path = self._prepare(args, plugins, env, qmp)
        vm = RunningVm(argv, full_env, qmp_path, self.workdir)
        self.vms.append(vm)
        return vm

    def run(self, *args: str, plugins: Iterable[PluginSource] = (),
            env: dict[str, str] | None = None, timeout: float = 60.0) -> GuestRun:
        """Run ``stratovmm ARGS`` to the end (no QMP socket); its exit status and output."""
        argv, full_env, _ = self._prepare(args, plugins, env, qmp=False)
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=full_env, cwd=self.workdir)
        return GuestRun(proc.returncode, proc.stdout.decode(errors="replace"),
                        proc.stderr.decode(errors="replace"))

    @contextlib.contextmanager
    def linux_boot(self) -> Iterator[None]:
        """Hold the machine-wide boot lock around a Linux boot (see ``guest.boot_lock``)."""
        with boot_lock():
            yield

    def close(self) -> None:
        """End every VM this launcher started."""
        for vm in self.vms:
            vm.close()
        shutil.rmtree(self.workdir / "site", ignore_errors=True)
        shutil.rmtree(self.sockdir, ignore_errors=True)

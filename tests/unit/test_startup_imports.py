"""What a start imports: only what the VM uses.  A VM with no QMP socket, no virtio
device and no socket-backed character device (the first-byte benchmark's VM: a serial
port on stdio) imports none of the QMP server's modules, no QMP command table, no
virtio model, no plugin's device model, not Python's socket module, and no module that
only the entry point cache saves us from (importlib.metadata, stevedore)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# main() up to the kernel check, which fails (no such file) after the configuration is
# loaded and checked: everything before building the VM has been imported by then
PROBE = """
import sys
from stratovmm.__main__ import main
status = main(["-m", "256M", "-kernel", "/nonexistent/kernel", "-serial", "stdio"] + sys.argv[1:])
print(status)
print(" ".join(sorted(sys.modules)))
"""

NOT_FOR_A_PLAIN_VM = ("stratovmm.qmp.commands", "stratovmm.qmp.dispatch", "stratovmm.qmp.server",
                      "stratovmm.qmp.framing", "stratovmm.machine.hotplug",
                      "stratovmm.virtio.device", "stratovmm.virtio.mmio", "stratovmm.virtio.queue",
                      "stratovmm_blk.device", "stratovmm_net.device", "stratovmm_vsock.device",
                      "stratovmm_console.device", "stratovmm_rng.device",
                      "stratovmm_balloon.device", "socket", "stevedore", "jsonschema",
                      # plugins that declare their options and are not named
                      "stratovmm_blk.plugin", "stratovmm_net.plugin", "stratovmm_vsock.plugin",
                      "stratovmm_console.plugin", "stratovmm_rng.plugin",
                      "stratovmm_balloon.plugin")


def imported(tmp_path: Path, *args: str) -> tuple[str, set[str]]:
    """The exit status and modules of a start in ``tmp_path``, as a second start: the first
    fills the entry point cache (``python -c`` puts the working directory on ``sys.path``,
    so its time stamp is made old enough for the cache to be kept)."""
    os.utime(tmp_path, (1, 1))
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                             text=True, check=True, cwd=tmp_path).stdout.splitlines()
    return out[0], set(out[1].split())


def test_a_plain_vm_imports_only_what_it_uses(tmp_path: Path) -> None:
    status, modules = imported(tmp_path)
    assert status != "0"                    # refused: the kernel does not exist
    assert "stratovmm.config.model" in modules and "stratovmm_serial.plugin" in modules
    assert sorted(m for m in NOT_FOR_A_PLAIN_VM if m in modules) == []


PLUGINS = {f"stratovmm_{name}.plugin" for name in
           ("blk", "net", "vsock", "console", "rng", "balloon", "serial")}


def test_a_vm_with_qmp_gets_its_command_table_and_every_plugin(tmp_path: Path) -> None:
    """The QMP command table is registered once the configuration serves QMP, over every
    plugin (any of them may be hot-plugged or asked)."""
    _status, modules = imported(tmp_path, "-api-channel", f"unix:{tmp_path}/qmp.sock")
    assert {"stratovmm.qmp.commands", "stratovmm.machine.hotplug"} <= modules
    assert modules >= PLUGINS


def test_a_named_option_imports_its_plugin(tmp_path: Path) -> None:
    """-drive imports the blk plugin; -device DRIVER the plugin that declares it."""
    _status, modules = imported(tmp_path, "-drive", "id=d0,file=/nonexistent",
                                "-device", "vsock,id=v0,guest-cid=3")
    assert {"stratovmm_blk.plugin", "stratovmm_vsock.plugin"} <= modules
    assert "stratovmm_net.plugin" not in modules


def test_an_option_nobody_declares_imports_every_plugin(tmp_path: Path) -> None:
    """So that the parser's error names what is installed (the same message as before)."""
    status, modules = imported(tmp_path, "-device", "no-such-driver,id=x")
    assert status == "2"
    assert modules >= PLUGINS

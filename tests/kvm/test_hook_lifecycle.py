"""Every hook of ``stratovmm.hookspecs`` is called by the real ``stratovmm``, once, in the
documented lifecycle order, with the arguments it promises (a probe plugin logs each
call; a tiny guest runs; QMP pauses, resumes and ends the VM)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from stratovmm.testing.vm import PluginSource, VmLauncher

PROBE = PluginSource("test-lifecycle", "stratovmm_test_lifecycle",
                     Path(__file__).parent / "lifecycle_plugin")

# the order hookspecs.py documents, each with the detail the probe prints
EXPECTED = [
    ("vmm_register_devices", ""),
    ("vmm_register_qmp_commands", ""),
    ("vmm_check_config", "tag=t1 api=True"),
    ("create", "t1"),
    ("vmm_vm_created", "probe=True state=prelaunch tag=t1 api=True"),
    ("vmm_seccomp_rules", "plugin=test-lifecycle tag=t1 api=True"),
    ("vmm_vm_started", "state=running"),
    ("vmm_vm_paused", "state=paused"),
    ("vmm_vm_resumed", "state=running"),
    ("vmm_vm_shutdown", "reason=host-qmp-quit"),
    ("close", "probe"),
]


def test_every_hook_is_called_in_lifecycle_order(
        stratovmm_vm: VmLauncher, stratovmm_tiny_guest: Callable[[str], Path]) -> None:
    """register → check_config → (create) → created → seccomp → started → paused → resumed
    → shutdown, each exactly once, each seeing the VM in the state the docstring says."""
    kernel = stratovmm_tiny_guest("main:\n    jmp halt\n")
    vm = stratovmm_vm.start("-kernel", str(kernel), "-lifecycle-probe", "tag=t1",
                            plugins=[PROBE])
    qmp = vm.qmp()
    vm.wait_for("LIFECYCLE vmm_vm_started", stream="stderr")
    assert qmp.command("x-lifecycle-probe")["return"] == {"state": "running"}
    qmp.command("stop")
    vm.wait_for("LIFECYCLE vmm_vm_paused", stream="stderr")
    qmp.command("cont")
    vm.wait_for("LIFECYCLE vmm_vm_resumed", stream="stderr")
    qmp.command("quit")
    assert vm.wait() == 0
    calls = [(m.group(1), m.group(2).strip())
             for m in re.finditer(r"^LIFECYCLE (\S+) ?(.*)$", vm.stderr, re.M)]
    assert calls == EXPECTED, vm.stderr

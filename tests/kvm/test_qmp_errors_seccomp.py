"""Invalid QMP arguments under the seccomp filter: jsonschema, which words the error, is
imported before the filter goes on (a lazy import after it asked ``uname`` and killed
the VM), so each bad request gets its GenericError and the VM keeps running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qmp_vm import VmProcess, build_loop_guest, loop_guest_args


@pytest.fixture
def vm(kvm_available: None, tmp_path: Path) -> Iterator[VmProcess]:
    process = VmProcess(loop_guest_args(build_loop_guest(tmp_path), "-name", "errs"))
    assert process.wait_stdout("READY"), process.stderr
    yield process
    process.close()


def test_bad_arguments_are_answered_with_the_filter_on(vm: VmProcess) -> None:
    """Wrong types and unknown keys in several commands get worded GenericErrors; the VM
    still answers query-status and quits with status 0."""
    with vm.client() as qmp:
        for name, args, desc in [
            ("stop", {"now": True}, "stop: unknown key 'now' (known: none)"),
            ("balloon", {"value": 1.5}, "balloon: value: expected an integer, got 1.5"),
            ("device_add", {"driver": "virtio-blk-mmio", "id": "x", "addr": 1.0},
             "device_add: addr: expected a string or an integer, got 1.0"),
        ]:
            reply = qmp.command(name, args)
            assert reply.get("error") == {"class": "GenericError", "desc": desc}, reply
        assert qmp.command("query-status")["return"]["status"] == "running"
        assert qmp.command("quit")["return"] == {}
    assert vm.wait() == 0, vm.stderr

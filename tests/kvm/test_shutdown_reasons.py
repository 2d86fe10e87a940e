"""How a VM ends: each guest event and host signal gives its QMP ``SHUTDOWN`` reason (seen
by a client connected at that moment) and its exit status.

| trigger                              | SHUTDOWN data                          | exit |
|--------------------------------------|----------------------------------------|------|
| i8042 reset (0xFE on port 0x64)      | guest true, ``guest-reset``            | 0    |
| triple fault (KVM_EXIT_SHUTDOWN)     | guest true, ``guest-reset``            | 0    |
| pvpanic PANICKED (port 0x505, bit 0) | guest true, ``guest-panic``            | 1    |
| pvpanic CRASH_LOADED only (bit 1)    | none: the guest runs on                | —    |
| SIGTERM, SIGINT, SIGHUP              | guest false, ``host-signal``           | 0    |
| QMP ``quit``                         | guest false, ``host-qmp-quit``         | 0    |

Guest-triggered cases start the VM with ``-freeze`` so the client is connected before
the guest runs its first instruction; ``cont`` starts it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from qmp_vm import VmProcess

from stratovmm.machine.pvpanic import PVPANIC_PORT, SUPPORTED_EVENTS
from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.qmp import QmpTestClient

TIMEOUT = 20.0

# Reads the pvpanic port (a driver's probe), prints it, then reports the event in the
# first byte of the command line ("1", "2" or "3" -> 1, 2 or 3), prints "AFTER" and halts
# for ever: only the VMM can end it.
PVPANIC = f"""
main:
    mov 24(%ebx), %edi            /* hvm_start_info.cmdline_paddr */
    mov $probe, %esi
    call print
    mov ${PVPANIC_PORT:#x}, %dx
    xor %eax, %eax
    inb %dx, %al
    call print_hex
    mov $newline, %esi
    call print
    movzbl (%edi), %eax
    sub $'0', %eax
    mov ${PVPANIC_PORT:#x}, %dx
    outb %al, %dx
    mov $after, %esi
    call print
    jmp halt
probe:   .asciz "pvpanic="
newline: .asciz "\\n"
after:   .asciz "AFTER\\n"
"""

# Prints "ALIVE" and resets through the i8042 (a normal guest reboot).
RESET = """
main:
    mov $alive, %esi
    call print
    jmp reset
alive: .asciz "ALIVE\\n"
"""

# An IDT with no entries, then an invalid opcode: #UD -> #GP -> #DF -> shutdown.
TRIPLE_FAULT = """
main:
    mov $alive, %esi
    call print
    lidt empty_idt
    ud2
    jmp halt
    .align 8
empty_idt: .word 0
    .long 0
alive: .asciz "ALIVE\\n"
"""

# Prints "ALIVE" and stays up until the host ends the VM.
IDLE = """
main:
    mov $alive, %esi
    call print
    jmp halt
alive: .asciz "ALIVE\\n"
"""

VmFactory = Callable[..., VmProcess]

GUESTS = {"pvpanic": PVPANIC, "reset": RESET, "triple": TRIPLE_FAULT, "idle": IDLE}


@pytest.fixture(scope="module")
def guests(kvm_available: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every guest of this module, assembled once."""
    directory = tmp_path_factory.mktemp("shutdown-guests")
    return {name: build_pvh_guest_or_skip(directory, name, body)
            for name, body in GUESTS.items()}


@pytest.fixture
def vm_factory() -> Iterator[VmFactory]:
    """Start VMs with a QMP socket and serial on stdout; close them after the test."""
    started: list[VmProcess] = []

    def start(kernel: Path, *extra: str) -> VmProcess:
        process = VmProcess(["-kernel", str(kernel), "-m", "256M", "-serial", "stdio", *extra])
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def start_frozen(vm: VmProcess) -> QmpTestClient:
    """Connect to a ``-freeze`` VM, check nothing ran yet, and start it with ``cont``."""
    client: QmpTestClient = vm.client()
    assert client.command("query-status")["return"]["status"] == "paused"
    assert vm.stdout == ""
    assert client.command("cont") == {"return": {}, "id": 2}
    return client


def assert_shutdown(client: QmpTestClient, guest: bool, reason: str) -> None:
    """The client gets SHUTDOWN with this data and a current timestamp, then EOF."""
    event = client.wait_event("SHUTDOWN", TIMEOUT)
    assert event["data"] == {"guest": guest, "reason": reason}, event
    assert abs(event["timestamp"]["seconds"] - time.time()) < 60
    assert client.read_eof(TIMEOUT)


@pytest.mark.parametrize("guest", ["reset", "triple"])
def test_reset_and_triple_fault_are_guest_reset_exit_0(guests: dict[str, Path],
                                                       vm_factory: VmFactory, guest: str) -> None:
    """i8042 reset, and a triple fault (KVM_EXIT_SHUTDOWN): SHUTDOWN guest-reset (guest
    true) to the client, exit status 0."""
    vm = vm_factory(guests[guest], "-freeze")
    with start_frozen(vm) as client:
        assert_shutdown(client, True, "guest-reset")
    assert vm.wait(TIMEOUT) == 0, vm.stderr
    assert "ALIVE" in vm.stdout


@pytest.mark.parametrize("event", [1, 3])
def test_pvpanic_panicked_is_guest_panic_exit_1(guests: dict[str, Path], vm_factory: VmFactory,
                                                event: int) -> None:
    """pvpanic PANICKED (alone or with CRASH_LOADED): the probe reads 0x3, SHUTDOWN
    guest-panic to the client, exit status 1 with an error line (panic=exit-failure)."""
    vm = vm_factory(guests["pvpanic"], "-freeze", "-append", str(event))
    with start_frozen(vm) as client:
        assert_shutdown(client, True, "guest-panic")
    assert vm.wait(TIMEOUT) == 1, vm.stderr
    assert f"pvpanic={SUPPORTED_EVENTS:08x}" in vm.stdout
    assert "VM shutting down: guest-panic" in vm.stderr


def test_pvpanic_crash_loaded_keeps_running(guests: dict[str, Path], vm_factory: VmFactory) -> None:
    """pvpanic CRASH_LOADED alone does not end the VM (a kdump kernel runs): the guest goes
    on, the VM stays running, and QMP quit then ends it with host-qmp-quit, exit 0."""
    vm = vm_factory(guests["pvpanic"], "-freeze", "-append", "2")
    with start_frozen(vm) as client:
        assert vm.wait_stdout("AFTER", TIMEOUT), vm.stderr
        assert client.command("query-status")["return"]["status"] == "running"
        assert client.command("quit") == {"return": {}, "id": 4}
        assert_shutdown(client, False, "host-qmp-quit")
        assert [e["event"] for e in client.events] == ["RESUME"]
    assert vm.wait(TIMEOUT) == 0, vm.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_host_signal_is_host_signal_exit_0(guests: dict[str, Path], vm_factory: VmFactory,
                                           signum: signal.Signals) -> None:
    """SIGTERM, SIGINT and SIGHUP each end a running VM in order: SHUTDOWN host-signal
    (guest false) to the client, socket file removed, exit status 0."""
    vm = vm_factory(guests["idle"])
    with vm.client() as client:
        assert vm.wait_stdout("ALIVE", TIMEOUT), vm.stderr
        assert client.command("query-status")["return"]["status"] == "running"
        vm.proc.send_signal(signum)
        assert_shutdown(client, False, "host-signal")
    assert vm.wait(TIMEOUT) == 0, vm.stderr
    assert not Path(vm.socket_path).exists()


def test_qmp_quit_is_host_qmp_quit_exit_0(guests: dict[str, Path], vm_factory: VmFactory) -> None:
    """QMP quit: the reply, SHUTDOWN host-qmp-quit (guest false) to every client, exit 0."""
    vm = vm_factory(guests["idle"])
    with vm.client() as asker, vm.client() as watcher:
        assert vm.wait_stdout("ALIVE", TIMEOUT), vm.stderr
        assert asker.command("quit") == {"return": {}, "id": 1}
        for client in (asker, watcher):
            assert_shutdown(client, False, "host-qmp-quit")
    assert vm.wait(TIMEOUT) == 0, vm.stderr

"""MicroVm: the machine that owns KVM, guest memory, buses, vCPUs and devices.

States (QMP ``query-status``)::

    prelaunch ──run()──► running ◄──cont/stop──► paused ◄──run() with -S/-freeze
        │                   │                      │
        └───────────────────┴──────► shutdown ◄────┘

``prelaunch`` lasts while the VM is built (plugins' ``vmm_vm_created`` sees it).
A ``-S``/``-freeze`` VM starts ``paused``, as StratoVirt v0.3's ``vm_start(paused)``
does; its first ``cont`` runs the guest for the first time.  Only ``running →
paused`` and ``paused → running`` are transitions QMP can ask for (v0.3's
``pause()``/``resume()`` refuse any other).

``run()`` serves the main event loop until a vCPU reports a reset/shutdown,
QMP asks to quit, or a signal arrives; it returns the process exit status.
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
from typing import Any

from stratovmm.boot import cpu, layout
from stratovmm.boot.cmdline import Cmdline
from stratovmm.boot.loader import load_kernel
from stratovmm.config.model import VmConfig
from stratovmm.errors import ConfigError, HostError
from stratovmm.host.eventloop import EventLoop, IoThread
from stratovmm.kvm import Kvm
from stratovmm.machine.bus import Bus
from stratovmm.machine.devicetable import DeviceTable
from stratovmm.machine.i8042 import I8042, PORT_BASE, PORT_LENGTH
from stratovmm.machine.irq import IrqLine
from stratovmm.machine.pvpanic import PVPANIC_LENGTH, PVPANIC_PORT, PvPanic
from stratovmm.machine.slots import VirtioSlots
from stratovmm.machine.vcpu import StopReason, Vcpu, install_kick_handler
from stratovmm.machine.vmapi import VmApi
from stratovmm.memory import HostGuestMemory, MemoryOptions
from stratovmm.plugin import PluginHost
from stratovmm.qmp.events import EventBus, EventThrottle
from stratovmm.registry import HotplugDriver, Registry

log = logging.getLogger(__name__)

REQUIRED_CAPS = ("KVM_CAP_IRQCHIP", "KVM_CAP_USER_MEMORY", "KVM_CAP_SET_TSS_ADDR",
                 "KVM_CAP_EXT_CPUID", "KVM_CAP_PIT2", "KVM_CAP_IRQFD", "KVM_CAP_IOEVENTFD",
                 "KVM_CAP_IMMEDIATE_EXIT")


class VmState(enum.StrEnum):
    """QMP run states."""

    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"


EXIT_OK = 0
EXIT_VM_ERROR = 1

# QEMU's termination signals: each ends the VM in order (SHUTDOWN "host-signal", exit 0).
# SIGHUP too, so closing the terminal of a `-serial stdio` VM restores the terminal mode.
HOST_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class MicroVm:
    """One microVM: build it, boot it, run it."""

    def __init__(self, config: VmConfig, host: PluginHost, registry: Registry) -> None:
        self.config = config
        self.host = host
        self.registry = registry
        self.state = VmState.PRELAUNCH
        self.started = False            # the guest has run (vmm_vm_started was called)
        self.exit_status = EXIT_OK
        self.shutdown_reason: str | None = None
        self.named_fds: dict[str, int] = {}
        self.plugin_state: dict[str, dict[str, Any]] = {}
        self.events = EventBus()
        self.throttles: list[EventThrottle] = []     # VmApi.throttled_event's
        self.main_loop = EventLoop("main")
        self.iothreads = {name: IoThread(name) for name in config.iothreads}
        self.cmdline = Cmdline(config.boot.append)
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.vcpus: list[Vcpu] = []
        self._irq_lines: dict[int, IrqLine] = {}
        self._lock = threading.Lock()
        self._setup_kvm()
        self.pio.mirror(self.vm.pio_windows.publish)
        self.mmio.mirror(self.vm.mmio_windows.publish)
        self._setup_memory()
        self.pio.insert(I8042(self._guest_reset), PORT_BASE, PORT_LENGTH, "i8042")
        self.pio.insert(PvPanic(self._guest_panic), PVPANIC_PORT, PVPANIC_LENGTH, "pvpanic")
        self.virtio = VirtioSlots(self.vm, self.memory, self.mmio, self.cmdline, self.irq_line,
                                  self.main_loop)
        self.devices = DeviceTable(self.virtio, self.pio, self.mmio, self.loop_for)
        self.api = VmApi(self)

    # -- what VmApi reads (vmapi.Machine) ------------------------------------------

    @property
    def name(self) -> str | None:
        """The ``-name`` of the guest."""
        return self.config.runtime.name

    @property
    def run_state(self) -> str:
        """The QMP run state."""
        return self.state.value

    @property
    def vcpu_count(self) -> int:
        """Number of vCPUs."""
        return self.config.machine.vcpus

    @property
    def hotplug_drivers(self) -> dict[str, HotplugDriver[Any]]:
        """Every registered ``device_add`` driver."""
        return self.registry.devices.hotplug_drivers

    def vcpu_thread_ids(self) -> list[int | None]:
        """The host thread id of each vCPU (None before it starts)."""
        return [vcpu.native_id for vcpu in self.vcpus]

    def loop_for(self, iothread: str | None) -> EventLoop:
        """The named iothread's loop, or the main loop for None."""
        if iothread is None:
            return self.main_loop
        try:
            return self.iothreads[iothread]
        except KeyError:
            raise ConfigError(
                f"iothread {iothread!r} is not defined (add -iothread id=NAME)") from None

    # -- construction -------------------------------------------------------------

    def _setup_kvm(self) -> None:
        self.kvm = Kvm()
        missing = [c for c in REQUIRED_CAPS if not self.kvm.check_extension(c)]
        if missing:
            raise HostError(f"/dev/kvm lacks {', '.join(missing)}")
        max_vcpus = self.kvm.check_extension("KVM_CAP_MAX_VCPUS")
        if self.config.machine.vcpus > max_vcpus:
            raise ConfigError(f"-smp: {self.config.machine.vcpus} vCPUs, KVM allows {max_vcpus}")
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(layout.TSS_ADDR)
        self.vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2()

    def _setup_memory(self) -> None:
        """Allocate guest RAM and start handing it to KVM.

        ``KVM_SET_USER_MEMORY_REGION`` of a few hundred MiB takes milliseconds in the
        kernel (about 6 ms for 256 MiB on a nested host), none of it needing this
        thread: a helper thread makes the calls while this one builds the devices,
        loads the kernel and creates the vCPUs, and ``load`` waits for it.  No guest
        code runs before then, and nothing before then needs the slots."""
        m = self.config.machine
        options = MemoryOptions(m.mem_size, m.mem_path, m.mem_share, m.dump_guest_core)
        self.memory = HostGuestMemory(options, layout.ram_regions(m.mem_size))
        self._slots_error: BaseException | None = None
        self._slots_thread = threading.Thread(target=self._map_memory, name="memslots",
                                              daemon=True)
        self._slots_thread.start()

    def _map_memory(self) -> None:
        try:
            for slot, region in enumerate(self.memory.regions):
                self.vm.set_user_memory_region(slot, region.gpa, region.size,
                                               self.memory.host_address(region))
        except BaseException as exc:  # re-raised by _memory_mapped in the building thread
            self._slots_error = exc

    def _memory_mapped(self) -> None:
        """Wait for the memory slots; their error, if any, is raised here."""
        self._slots_thread.join()
        if self._slots_error is not None:
            raise self._slots_error

    def irq_line(self, gsi: int) -> IrqLine:
        """The (shared) irqfd line for ``gsi``."""
        with self._lock:
            line = self._irq_lines.get(gsi)
            if line is None:
                line = self._irq_lines[gsi] = IrqLine(self.vm, gsi)
            return line

    def build_devices(self) -> None:
        """Create every cold-plugged device through its registered factory.  With a QMP
        socket the hot-replace slots are reserved first, so cold drives and NICs fill them
        from address 0, as in StratoVirt (``stratovmm.machine.slots``)."""
        devices = self.registry.devices
        self.virtio.use_drivers(devices.hotplug_drivers.values(),
                                reserve=self.config.runtime.api_channel is not None)
        for device_type in devices.device_types.values():
            owner = devices.owner[device_type.option.display]
            for item in self.config.devices(device_type.option.json_key):
                self.devices.create(device_type, owner, item, self.api)
        self.virtio.finish(self.api)

    def load(self) -> None:
        """Load the kernel and create the vCPUs (the command line is final now)."""
        boot = self.config.boot
        entry = load_kernel(self.memory, boot.kernel, self.cmdline, self.config.machine.vcpus,
                            boot.initrd)
        supported = cpu.kvm_features(self.kvm.supported_cpuid(), self.config.machine.cpu_features)
        count = self.config.machine.vcpus
        for index in range(count):
            vcpu = Vcpu(self.vm.create_vcpu(index), self.pio, self.mmio, self)
            vcpu.configure(supported, count, entry if index == 0 else None)
            self.vcpus.append(vcpu)
        self._memory_mapped()
        log.info("kernel %s loaded; cmdline: %s", boot.kernel, self.cmdline)

    # -- running ----------------------------------------------------------------------

    def run(self) -> int:
        """Start the iothreads and vCPUs and serve the main loop until the VM ends."""
        install_kick_handler()
        previous = {s: signal.signal(s, self._on_signal) for s in HOST_SIGNALS}
        try:
            for thread in self.iothreads.values():
                thread.start()
            frozen = self.config.runtime.freeze
            for vcpu in self.vcpus:
                vcpu.start(paused=frozen)
            if frozen:
                self.state = VmState.PAUSED
            else:
                self._started()
            self.main_loop.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._teardown()
        return self.exit_status

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # A Python signal handler runs between two bytecodes of whatever the main thread
        # was doing (holding the event bus lock, writing a QMP reply): hand the shutdown
        # to the loop instead of running it here.
        name = signal.Signals(signum).name
        self.main_loop.call_soon(lambda: self.shutdown("host-signal", f"signal {name}"))

    def vcpu_stopped(self, index: int, reason: StopReason, detail: str) -> None:
        """Called on a vCPU thread when the guest reset, shut down, or KVM failed."""
        failed = reason in (StopReason.INTERNAL_ERROR, StopReason.GUEST_PANIC)
        status = EXIT_VM_ERROR if failed else EXIT_OK
        if status != EXIT_OK:
            log.error("vCPU %d: %s", index, detail)
        self.main_loop.call_soon(lambda: self.shutdown(reason.value, f"vCPU {index}: {detail}",
                                                       status))

    def _guest_reset(self) -> None:
        """The i8042 reset line (on a vCPU thread)."""
        self.main_loop.call_soon(
            lambda: self.shutdown(StopReason.GUEST_RESET.value, "i8042 reset (0xFE on port 0x64)")
        )

    def _guest_panic(self) -> None:
        """The pvpanic PANICKED event (on a vCPU thread): QEMU ``-action panic=exit-failure``."""
        self.main_loop.call_soon(lambda: self.shutdown(
            StopReason.GUEST_PANIC.value, "pvpanic: the guest panicked", EXIT_VM_ERROR))

    def _started(self) -> None:
        self.state = VmState.RUNNING
        self.started = True
        self.host.vm_started(self.api)

    def pause(self) -> bool:
        """Park every vCPU and emit STOP (QMP ``stop``); False, doing nothing, unless the VM
        is running (v0.3's ``pause()`` refuses any other state)."""
        if self.state is not VmState.RUNNING:
            return False
        for vcpu in self.vcpus:
            vcpu.pause()
        self.state = VmState.PAUSED
        self.events.emit("STOP")
        self.host.vm_paused(self.api)
        return True

    def resume(self) -> bool:
        """Run parked vCPUs and emit RESUME (QMP ``cont``; also the first start after
        ``-S``/``-freeze``); False, doing nothing, unless the VM is paused."""
        if self.state is not VmState.PAUSED:
            return False
        for vcpu in self.vcpus:
            vcpu.resume()
        self.state = VmState.RUNNING
        self.events.emit("RESUME")
        if self.started:
            self.host.vm_resumed(self.api)
        else:
            self._started()
        return True

    def shutdown(self, reason: str, detail: str = "", status: int = EXIT_OK) -> None:
        """End the VM (idempotent; main loop thread): SHUTDOWN event, then leave ``run``."""
        if self.state is VmState.SHUTDOWN:
            return
        self.state = VmState.SHUTDOWN
        self.shutdown_reason = reason
        self.exit_status = status
        log.log(logging.ERROR if status else logging.INFO, "VM shutting down: %s (%s)", reason,
                detail)
        guest = reason.startswith("guest")
        for throttle in self.throttles:
            throttle.flush()
        self.events.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        for vcpu in self.vcpus:
            vcpu.stop()
        self.main_loop.stop()

    def _teardown(self) -> None:
        for vcpu in self.vcpus:
            vcpu.stop()
        for vcpu in self.vcpus:
            vcpu.join(2.0)
            if vcpu.unhandled_pio or vcpu.unhandled_mmio:
                log.info("vCPU %d: %d PIO and %d MMIO accesses to addresses no device claims"
                         " (%d answered by the C run loop)", vcpu.index, vcpu.unhandled_pio,
                         vcpu.unhandled_mmio, sum(vcpu.fd.unclaimed_exits()))
        self.host.vm_shutdown(self.api, self.shutdown_reason or "host-error")
        for thread in self.iothreads.values():
            thread.join(2.0)
        self.virtio.close()
        self.devices.close_all()

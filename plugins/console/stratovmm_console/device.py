"""virtio-console (virtio 1.2 §5.3), port 0 only: the guest's ``/dev/hvcN``.

Without ``VIRTIO_CONSOLE_F_MULTIPORT`` the device has two queues (§5.3.2):
0 = receiveq (host → guest: the driver posts device-writable buffers) and
1 = transmitq (guest → host: device-readable buffers).  No feature bit is
offered: ``F_SIZE`` needs a terminal size a socket does not have, and Linux
never uses ``F_EMERG_WRITE``.  The config space still reads as §5.3.4 lays it
out (cols, rows, max_nr_ports = 1, emerg_wr).

Both queues are served by the core's ``serve`` (a budget of buffers per loop
turn).  Transmit buffers are returned at once, always (see ``backend``: Linux
spins until they come back).  A receive buffer is taken when the guest posts it
and *held* by ``serve`` until the client sends bytes, which are read straight
into it (``recvmsg_into`` on the chain's memoryviews); when the guest has no
receive buffer left, the socket is no longer read until the driver posts more
and kicks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Protocol

from stratovmm.api import (
    ID_CONSOLE,
    DescriptorChain,
    VirtioDevice,
)

QUEUE_SIZE = 256
RECEIVEQ, TRANSMITQ = 0, 1
# §5.3.3 feature bits (none offered; named for the tests and readers)
F_SIZE, F_MULTIPORT, F_EMERG_WRITE = 0, 1, 2
# §5.3.4 struct virtio_console_config: cols u16, rows u16, max_nr_ports u32, emerg_wr u32
CONFIG = struct.Struct("<HHII")


class ConsolePort(Protocol):
    """The host side of port 0: ``backend.ConsoleSocket`` (a unix socket server),
    ``logfile.ConsoleFile`` (output appended to a file) or ``ptyport.ConsolePty`` (a
    pseudo-terminal)."""

    on_input: Callable[[], None]

    @property
    def stats(self) -> dict[str, int]: ...

    @property
    def connected(self) -> bool: ...

    @property
    def buffered(self) -> int: ...

    def want_input(self, wanted: bool) -> None: ...

    def send(self, views: Sequence[memoryview]) -> None: ...

    def recv_into(self, views: list[memoryview]) -> int | None: ...

    def close(self) -> None: ...


class ConsoleDevice(VirtioDevice):
    """One virtio-console whose port 0 is bridged to ``port``."""

    DEVICE_TYPE = ID_CONSOLE
    QUEUE_SIZES = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, device_id: str, port: ConsolePort) -> None:
        super().__init__(device_id)
        self.port = port
        port.on_input = self._on_input

    def config_space(self) -> bytes:
        """§5.3.4: no size (F_SIZE not offered), one port, emerg_wr reads as 0."""
        return CONFIG.pack(0, 0, 1, 0)

    def handle_queue(self, index: int) -> None:
        """receiveq: new buffers, input can flow again; transmitq: guest output."""
        if index == RECEIVEQ:
            self._receive()
        elif index == TRANSMITQ:
            self.serve(TRANSMITQ, self._transmit)

    # -- guest → host -----------------------------------------------------------------------

    def _transmit(self, chain: DescriptorChain) -> int:
        """Hand the chain's bytes to the socket; the device writes nothing (used length 0)."""
        memory = self.memory
        assert memory is not None
        self.counters["requests"] += 1
        if chain.writable:
            # §5.3.6.1: the driver MUST NOT put a device-writable buffer in a transmitq
            self.guest_fault("tx-writable", f"transmit chain at head {chain.head} has "
                             "device-writable buffers (§5.3.6.1)")
            return 0
        views = chain.read_views(memory)
        self.port.send(views)
        self.counters["bytes_written"] += chain.readable_len
        return 0

    # -- host → guest ------------------------------------------------------------------------

    def _on_input(self) -> None:
        """The client has bytes: serve the receiveq (through ``process_queue``, which turns a
        broken ring into DEVICE_NEEDS_RESET), or stop watching the socket if the device is
        stopped, e.g. by a broken transmitq, so level-triggered readiness cannot spin."""
        if not self.active:
            self.port.want_input(False)
            return
        self.process_queue(RECEIVEQ)

    def _receive(self) -> None:
        """Fill receive buffers from the client until it has nothing more (the buffer in hand
        is held for its next bytes), the guest has no buffer left, or this turn's budget is
        spent; watch the socket only while the guest has a buffer for what it reads."""
        wanted = False           # a broken ring raises: no more reading until a reset
        try:
            self.serve(RECEIVEQ, self._fill)
            queue = self.queues[RECEIVEQ]
            assert queue is not None
            wanted = self.active and (self.held_chains(RECEIVEQ) > 0 or queue.has_available())
        finally:
            self.port.want_input(wanted)

    def _fill(self, chain: DescriptorChain) -> int | None:
        """Client bytes into one receive buffer; None keeps it while the client has none."""
        assert self.memory is not None
        if chain.readable or not chain.writable_len:
            # §5.3.6.1: the driver MUST NOT put a device-readable buffer in a receiveq
            self.guest_fault("rx-readable", f"receive chain at head {chain.head} has "
                             "device-readable buffers or no room (§5.3.6.1)")
            return 0
        n = self.port.recv_into(chain.write_views(self.memory))
        if n is not None:
            self.counters["bytes_read"] += n
        return n

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_reset(self) -> None:
        """The held buffer went with the old queue: stop reading input."""
        self.port.want_input(False)

    def close(self) -> None:
        """Close the client and the listening socket; remove the socket file."""
        self.port.close()

    def stats(self) -> dict[str, int]:
        """The virtio counters plus the socket's: bytes dropped, connections, bytes buffered."""
        out = super().stats()
        out.update(self.port.stats)
        out["output_buffered"] = self.port.buffered
        out["connected"] = int(self.port.connected)
        return out

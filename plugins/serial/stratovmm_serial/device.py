"""A 16550A UART (ports base..base+7), as Linux's 8250 driver expects it.

Transmit is immediate (THR always empty, LSR THRE|TEMT), so the guest never
waits on us; received bytes queue in a bounded FIFO that the host side fills.
In loopback mode (MCR bit 4) what the guest transmits comes back through RBR,
held in a 16550's 16-byte receive FIFO: a byte that finds it full is lost and
LSR.OE (overrun) is set until the guest reads LSR, as the chip does, so a
guest flooding THR in loopback costs the host nothing.
The interrupt is an edge on the IRQ line each time a newly enabled condition
becomes pending (data ready, transmitter empty), as Firecracker's serial does;
IIR reports the highest-priority pending one.

The UART is a ``RegisterDevice``: the base class locks, counts each register
access (``requests``) and bounds the window; the interrupt, the output to the
backend (stdout may block) and the "room for input again" notice run after the
lock is released (``after_unlock``).  Its ``bytes_written``/``bytes_read`` are
characters (guest → host through THR, host → guest queued for RBR), not register
bytes: that is what a reader of ``query-stats`` wants to know about a console.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from stratovmm.api import RegisterDevice

# register offsets (DLAB=0 unless noted)
RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
# IER bits
IER_RDA, IER_THRE = 0x01, 0x02
# IIR values
IIR_NONE, IIR_THRE, IIR_RDA, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0
# LCR / MCR / LSR / MSR bits
LCR_DLAB = 0x80
MCR_LOOP = 0x10
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

FIFO_CAPACITY = 64          # host input waiting for the guest
LOOPBACK_FIFO = 16          # the 16550's receive FIFO, all loopback bytes can occupy
WINDOW = 8                  # ports base..base+7


class Uart16550(RegisterDevice):
    """The UART's registers; ``out`` receives transmitted bytes, ``irq`` raises the line,
    ``on_rx_space`` hears that the guest drained a full input FIFO, ``on_close`` releases
    the backend, ``backend_stats`` adds the backend's counters (output dropped)."""

    def __init__(self, out: Callable[[bytes], None], irq: Callable[[], None],
                 on_rx_space: Callable[[], None] | None = None,
                 on_close: Callable[[], None] | None = None, device_id: str = "serial",
                 backend_stats: Callable[[], dict[str, int]] | None = None) -> None:
        super().__init__(device_id, WINDOW)
        self._out = out
        self._irq = irq
        self._on_rx_space = on_rx_space
        self._on_close = on_close
        self._backend_stats = backend_stats
        self._rx: collections.deque[int] = collections.deque()
        self._ier = 0
        self._lcr = 0x03          # 8N1
        self._mcr = 0x08          # OUT2
        self._scr = 0
        self._dll, self._dlm = 0x0C, 0x00   # 9600 baud
        self._fifo = False
        self._thre_pending = False
        self._overrun = False     # LSR.OE: a loopback byte found the FIFO full
        self.loopback_overruns = 0
        self.tx_bytes = 0
        self.rx_bytes = 0

    def stats(self) -> dict[str, int]:
        """Register accesses and guest faults, and characters each way under the common
        names: ``bytes_written`` the guest sent to the host, ``bytes_read`` the host gave
        it; ``loopback_overruns`` the loopback bytes a full FIFO lost; and the backend's."""
        with self.lock:
            out = super().stats()
            out.update(bytes_written=self.tx_bytes, bytes_read=self.rx_bytes,
                       loopback_overruns=self.loopback_overruns)
        if self._backend_stats is not None:       # the backend's own lock, not ours
            out.update(self._backend_stats())
        return out

    def close(self) -> None:
        """Release the backend (restore the terminal)."""
        if self._on_close is not None:
            self._on_close()

    # -- host side ------------------------------------------------------------------

    def rx_space(self) -> int:
        """How many bytes ``receive`` can take now."""
        with self.lock:
            return FIFO_CAPACITY - len(self._rx)

    def receive(self, data: bytes) -> int:
        """Queue input for the guest; returns how many bytes fit."""
        with self.lock:
            n = min(len(data), FIFO_CAPACITY - len(self._rx))
            self._rx.extend(data[:n])
            self.rx_bytes += n
            raise_irq = n > 0 and self._ier & IER_RDA
        if raise_irq:
            self._irq()
        return n

    # -- guest side (vCPU threads, under the lock) ----------------------------------------

    def read_register(self, offset: int, size: int) -> bytes:
        """A guest ``in`` from base + ``offset`` (a wider access: the register, then zeros)."""
        value, freed = self._read_register(offset)
        if freed and self._on_rx_space is not None:
            self.after_unlock(self._on_rx_space)
        return bytes([value]) + bytes(size - 1)

    def write_register(self, offset: int, data: bytes) -> None:
        """A guest ``out`` to base + ``offset`` (a wider access: its low byte)."""
        out, raise_irq = self._write_register(offset, data[0])
        if out is not None:
            self.after_unlock(lambda: self._out(out))
        if raise_irq:
            self.after_unlock(self._irq)

    def _read_register(self, offset: int) -> tuple[int, bool]:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self._dll, False
            if not self._rx:
                return 0, False
            return self._rx.popleft(), len(self._rx) == FIFO_CAPACITY - 1
        if offset == IER:
            return (self._dlm if dlab else self._ier), False
        if offset == IIR_FCR:
            return self._iir(), False
        if offset == LCR:
            return self._lcr, False
        if offset == MCR:
            return self._mcr, False
        if offset == LSR:
            overrun, self._overrun = self._overrun, False     # reading LSR clears OE
            return (LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
                    | (LSR_OE if overrun else 0)), False
        if offset == MSR:
            return self._msr(), False
        return self._scr, False

    def _iir(self) -> int:
        fifo = IIR_FIFO if self._fifo else 0
        if self._ier & IER_RDA and self._rx:
            return IIR_RDA | fifo
        if self._ier & IER_THRE and self._thre_pending:
            self._thre_pending = False       # reading IIR clears a THRE interrupt
            return IIR_THRE | fifo
        return IIR_NONE | fifo

    def _msr(self) -> int:
        if self._mcr & MCR_LOOP:             # loopback: outputs wired to inputs
            m = self._mcr
            return ((MSR_CTS if m & 0x02 else 0) | (MSR_DSR if m & 0x01 else 0)
                    | (MSR_RI if m & 0x04 else 0) | (MSR_DCD if m & 0x08 else 0))
        return MSR_DCD | MSR_DSR | MSR_CTS

    def _write_register(self, offset: int, value: int) -> tuple[bytes | None, bool]:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                self._dll = value
                return None, False
            if self._mcr & MCR_LOOP:
                if len(self._rx) < LOOPBACK_FIFO:
                    self._rx.append(value)
                else:
                    self._overrun = True
                    self.loopback_overruns += 1
                return None, bool(self._ier & IER_RDA)
            self.tx_bytes += 1
            self._thre_pending = True
            return bytes([value]), bool(self._ier & IER_THRE)
        if offset == IER:
            if dlab:
                self._dlm = value
                return None, False
            newly = value & ~self._ier
            self._ier = value & 0x0F
            if newly & IER_THRE:
                self._thre_pending = True
            return None, bool((newly & IER_THRE) or (newly & IER_RDA and self._rx))
        if offset == IIR_FCR:
            self._fifo = bool(value & 0x01)
            if value & 0x02:
                self._rx.clear()
            return None, False
        if offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._mcr = value & 0x1F
        elif offset == SCR:
            self._scr = value
        return None, False

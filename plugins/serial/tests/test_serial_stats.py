"""The serial device's counters, under the names every device reports in QMP query-stats."""

from __future__ import annotations

from stratovmm_serial.device import Uart16550
from stratovmm_serial.plugin import SerialDevice


def test_stats_count_bytes_each_way() -> None:
    """Bytes the guest transmits are bytes_written; bytes the host queues for it bytes_read."""
    sent: list[bytes] = []
    uart = Uart16550(out=sent.append, irq=lambda: None)
    device = SerialDevice(uart, None)
    for byte in b"hi\n":
        uart.write(0, bytes([byte]))
    assert uart.receive(b"ok") == 2
    assert b"".join(sent) == b"hi\n"
    assert device.stats() == {"bytes_written": 3, "bytes_read": 2}


def test_loopback_is_a_bounded_fifo_with_overrun() -> None:
    """MCR loopback: THR bytes come back through RBR, at most the 16550's 16-byte FIFO of
    them; the rest is lost and LSR.OE reports the overrun until LSR is read."""
    from stratovmm_serial.device import LOOPBACK_FIFO, LSR, LSR_DR, LSR_OE, MCR, MCR_LOOP

    sent: list[bytes] = []
    uart = Uart16550(out=sent.append, irq=lambda: None)
    uart.write(MCR, bytes([MCR_LOOP]))
    for i in range(100_000):
        uart.write(0, bytes([i & 0xFF]))
    assert sent == [], "loopback bytes must not reach the host side"
    lsr = uart.read(LSR, 1)[0]
    assert lsr & LSR_OE and lsr & LSR_DR
    assert not uart.read(LSR, 1)[0] & LSR_OE, "reading LSR clears OE"
    got = bytes(uart.read(0, 1)[0] for _ in range(LOOPBACK_FIFO))
    assert got == bytes(range(LOOPBACK_FIFO))
    assert not uart.read(LSR, 1)[0] & LSR_DR
    uart.write(0, b"x")
    assert uart.read(0, 1) == b"x" and not uart.read(LSR, 1)[0] & LSR_OE

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

"""The serial UART as a RegisterDevice: its counters under the names every device reports in
QMP query-stats, bad accesses as counted guest faults, the loopback FIFO, and the backend
and interrupt called outside the device lock."""

from __future__ import annotations

from stratovmm_serial.device import IER, IER_THRE, LCR, Uart16550


def test_stats_count_bytes_each_way() -> None:
    """Characters the guest transmits are bytes_written, those the host queues for it
    bytes_read (register accesses are requests, whatever register they touch)."""
    sent: list[bytes] = []
    uart = Uart16550(out=sent.append, irq=lambda: None)
    uart.write(LCR, b"\x03")
    for byte in b"hi\n":
        uart.write(0, bytes([byte]))
    assert uart.receive(b"ok") == 2
    assert b"".join(sent) == b"hi\n"
    assert uart.stats() == {"requests": 4, "bytes_written": 3, "bytes_read": 2, "errors": 0,
                            "guest_faults": 0, "loopback_overruns": 0}


def test_bad_access_is_a_counted_guest_fault() -> None:
    """An access past the 8-port window answers all-ones, changes nothing and is counted
    (RegisterDevice's rule), never an exception on the vCPU thread."""
    uart = Uart16550(out=lambda _data: None, irq=lambda: None)
    assert uart.read(7, 2) == b"\xff\xff"
    uart.write(8, b"x")
    assert uart.stats()["guest_faults"] == 2


def test_output_and_interrupt_run_without_the_device_lock() -> None:
    """The backend write and the interrupt happen after the lock is released, so a backend
    that blocks (a full stdout pipe) holds up only the writing vCPU, never the host side
    waiting for the lock."""
    seen: list[str] = []
    uart: Uart16550

    def out(_data: bytes) -> None:
        free = uart.lock.acquire(blocking=False)
        seen.append(f"out lock-free={free}")
        if free:
            uart.lock.release()

    def irq() -> None:
        free = uart.lock.acquire(blocking=False)
        seen.append(f"irq lock-free={free}")
        if free:
            uart.lock.release()

    uart = Uart16550(out=out, irq=irq)
    uart.write(IER, bytes([IER_THRE]))
    uart.write(0, b"x")
    assert seen == ["irq lock-free=True", "out lock-free=True", "irq lock-free=True"]


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

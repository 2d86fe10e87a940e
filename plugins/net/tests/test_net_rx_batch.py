"""Receive batches under EVENT_IDX without mergeable buffers: one buffer per frame, so a
turn's full budget of frames can leave the device holding no buffer and the tap
unwatched; it must come back by itself, or ask the driver for its next kick (§2.7.10)."""

from __future__ import annotations

from stratovmm_net.device import F_MAC, RX
from test_net_device import Rig, ether

from stratovmm.api import SERVE_BUDGET
from stratovmm.testing import spec as c

FEATURES = (1 << c.F_VERSION_1) | (1 << F_MAC) | (1 << c.F_EVENT_IDX)


def vring_need_event(event: int, new: int, old: int) -> bool:
    """The driver's kick test (§2.7.10, Linux ``vring_need_event``)."""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


def big_rig() -> Rig:
    """A Rig whose queues hold 256 buffers, EVENT_IDX negotiated."""
    r = Rig(features=FEATURES, event_idx=True)
    r.h.queue_size = 256
    r.h.start(FEATURES, event_idx=True)
    return r


def test_frames_past_a_full_batch_arrive_without_a_kick() -> None:
    """SERVE_BUDGET + 16 frames waiting and 100 buffers posted with one kick: all the
    frames reach the guest on later loop turns, with no further kick."""
    r = big_rig()
    try:
        frames = SERVE_BUDGET + 16
        for i in range(frames):
            r.peer.send(bytes(12) + ether(bytes([i]) * 40))
        r.post_rx(*[1600] * 100)
        for _ in range(5):
            r.loop.run_once(0.1)
        assert len(r.h.queues[RX].used_elements()) == frames
    finally:
        r.close()


def test_a_full_batch_that_takes_every_buffer_asks_for_the_next_kick() -> None:
    """Exactly SERVE_BUDGET buffers and more frames waiting: the turn fills every buffer,
    and avail_event then makes the driver's next buffer kick (else receive stalls)."""
    r = big_rig()
    try:
        for i in range(SERVE_BUDGET + 16):
            r.peer.send(bytes(12) + ether(bytes([i]) * 40))
        r.post_rx(*[1600] * SERVE_BUDGET)
        for _ in range(5):
            r.loop.run_once(0.1)
        q = r.h.queues[RX]
        assert len(q.used_elements()) == SERVE_BUDGET
        r.post_rx(1600, kick=False)
        assert vring_need_event(q.avail_event(), SERVE_BUDGET + 1, SERVE_BUDGET), (
            f"avail_event {q.avail_event()}: the driver would not kick for its next buffer")
    finally:
        r.close()

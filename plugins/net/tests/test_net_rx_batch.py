"""Receive batches under EVENT_IDX without mergeable buffers: after a full batch the
device holds no buffer, so it must come back by itself; the driver, whose avail_event
was never moved, does not kick for the buffers it adds (§2.7.10)."""

from __future__ import annotations

from stratovmm_net.device import F_MAC, RX, RX_BATCH
from test_net_device import Rig, ether

from stratovmm.virtio import constants as c


def test_frames_past_a_full_batch_arrive_without_a_kick() -> None:
    """RX_BATCH + 16 frames waiting and 100 buffers posted with one kick: all the frames
    reach the guest on later loop turns, with no further kick."""
    features = (1 << c.F_VERSION_1) | (1 << F_MAC) | (1 << c.F_EVENT_IDX)
    r = Rig(features=features, event_idx=True)
    try:
        r.h.queue_size = 256
        r.h.start(features, event_idx=True)
        frames = RX_BATCH + 16
        for i in range(frames):
            r.peer.send(bytes(12) + ether(bytes([i]) * 40))
        r.post_rx(*[1600] * 100)
        for _ in range(5):
            r.loop.run_once(0.1)
        assert len(r.h.queues[RX].used_elements()) == frames
    finally:
        r.close()

"""The one token bucket (``stratovmm.devices.ratelimit``): as QMP flow control (StratoVirt's
leaky bucket, 100 commands per second) and as a device's rate limit (``delay_for``)."""

from __future__ import annotations

import pytest

from stratovmm.devices.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_up_to_capacity_then_refused() -> None:
    """At one instant exactly one second's worth of commands is admitted, the next refused."""
    bucket = TokenBucket(100, clock=FakeClock())
    assert [bucket.take(1) for _ in range(100)] == [1] * 100
    assert bucket.take(1) == 0


def test_bucket_refills_at_the_rate() -> None:
    """After a full burst, 0.1 s admits exactly 10 more commands."""
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    for _ in range(100):
        bucket.take(1)
    clock.now += 0.1
    assert sum(bucket.take(1) for _ in range(50)) == 10


def test_refused_requests_take_nothing() -> None:
    """A flood does not lock the bucket: refusals take no tokens, so one second later a
    whole burst is there again."""
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    for _ in range(1000):
        bucket.take(1)
    assert bucket.available() == 0
    clock.now += 1.0
    assert bucket.available() == 100


def test_steady_rate_is_never_refused() -> None:
    """A client sending exactly 100 commands per second is always admitted."""
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    for _ in range(1000):
        assert bucket.take(1) == 1
        clock.now += 0.01


def test_take_grants_what_is_there_and_delay_for_says_when_the_rest_comes() -> None:
    """A device asking for more than is left gets the rest now and learns how long the
    remainder takes to accrue (so it arms a timer instead of polling)."""
    clock = FakeClock()
    bucket = TokenBucket(64, clock=clock)
    assert bucket.take(48) == 48
    assert bucket.take(32) == 16
    assert bucket.delay_for(16) == pytest.approx(0.25)
    assert bucket.delay_for(1000) == pytest.approx(1.0)       # capped at the burst


def test_rate_must_be_positive() -> None:
    """A zero rate is a programming error."""
    with pytest.raises(ValueError):
        TokenBucket(0)

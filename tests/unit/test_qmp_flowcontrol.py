"""The QMP leaky bucket: 100 commands per second, bursts up to the capacity."""

from __future__ import annotations

import pytest

from stratovmm.qmp.flowcontrol import LeakyBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_up_to_capacity_then_refused() -> None:
    """At one instant exactly `capacity` commands are admitted, the next is refused."""
    bucket = LeakyBucket(rate=100, clock=FakeClock())
    assert [bucket.admit() for _ in range(100)] == [True] * 100
    assert not bucket.admit()


def test_bucket_drains_at_the_rate() -> None:
    """After a full burst, 0.1 s frees room for exactly 10 more commands."""
    clock = FakeClock()
    bucket = LeakyBucket(rate=100, clock=clock)
    for _ in range(100):
        bucket.admit()
    clock.now += 0.1
    assert sum(bucket.admit() for _ in range(50)) == 10


def test_refused_commands_pour_nothing() -> None:
    """A flood does not lock the bucket: refusals do not raise the level."""
    clock = FakeClock()
    bucket = LeakyBucket(rate=100, clock=clock)
    for _ in range(1000):
        bucket.admit()
    assert bucket.level == pytest.approx(100)
    clock.now += 1.0
    assert bucket.level == 0
    assert bucket.admit()


def test_steady_rate_is_never_refused() -> None:
    """A client sending exactly 100 commands per second is always admitted."""
    clock = FakeClock()
    bucket = LeakyBucket(rate=100, clock=clock)
    for _ in range(1000):
        assert bucket.admit()
        clock.now += 0.01


def test_rate_must_be_positive() -> None:
    """A zero rate is a programming error."""
    with pytest.raises(ValueError):
        LeakyBucket(rate=0)

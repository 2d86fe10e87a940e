"""A token bucket: the rate limit behind ``iops=`` (blk), ``bytes_per_sec=`` (rng) and QMP
flow control.

Tokens accrue at ``rate`` per second up to ``burst``; a request takes what it
needs or waits.  Pure arithmetic over a monotonic clock, so devices can ask
"how long until N tokens" and arm a loop timer instead of polling.

StratoVirt's QMP flow control is a *leaky* bucket (``LeakBucket``: each command
pours one unit into a bucket that drains at the rate and holds one second's
worth).  That is this algorithm seen from the other side: the leaky bucket's
level is ``burst`` minus the tokens here, draining is refilling, and "the unit
fits" is "a token is there".  So QMP uses this class (``take(1)``) and the core
has one bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst`` (default: one second's worth)."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def available(self) -> int:
        """Whole tokens available now."""
        self._refill()
        return int(self._tokens)

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` tokens; returns how many were granted (maybe 0)."""
        self._refill()
        granted = int(min(wanted, self._tokens))
        self._tokens -= granted
        return granted

    def delay_for(self, wanted: int) -> float:
        """Seconds until ``wanted`` tokens (capped at the burst) will be available."""
        self._refill()
        missing = min(wanted, self.burst) - self._tokens
        return max(0.0, missing / self.rate)

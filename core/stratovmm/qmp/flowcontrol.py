"""QMP flow control: a leaky bucket that admits 100 commands per second per VM.

SPEC §3 (StratoVirt's ``LeakBucket``): each admitted command pours one unit
into a bucket that drains at ``rate`` units per second and holds ``capacity``
units.  A command that would overflow it is refused with
``OperationThrottled`` and pours nothing, so a client that keeps to the rate
is never refused, a burst of up to ``capacity`` commands is admitted at once,
and a flood gets exactly the rate through.  One bucket serves every client of
the VM: the limit protects the VM, not a connection.

``STRATOVMM_QMP_RATE`` changes the rate (commands per second) for tools that
drive QMP harder than a person does, e.g. the 10,000-message fuzz test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from stratovmm.errors import ConfigError

COMMANDS_PER_SECOND = 100
RATE_ENV = "STRATOVMM_QMP_RATE"


def rate_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """The admitted commands per second: ``STRATOVMM_QMP_RATE`` or 100."""
    text = environ.get(RATE_ENV)
    if text is None:
        return COMMANDS_PER_SECOND
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not 1 <= rate <= 1e6:
        raise ConfigError(f"{RATE_ENV}: {text!r} is not a number of commands per second"
                          " between 1 and 1000000")
    return rate


class LeakyBucket:
    """``admit()`` is True while the drained level leaves room for one more unit."""

    def __init__(self, rate: float = COMMANDS_PER_SECOND, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = rate if capacity is None else capacity
        self._clock = clock
        self._level = 0.0
        self._last = clock()

    @property
    def level(self) -> float:
        """Units in the bucket now."""
        self._drain()
        return self._level

    def admit(self) -> bool:
        """Pour one unit if it fits; False means throttle this command."""
        self._drain()
        if self._level + 1 > self.capacity:
            return False
        self._level += 1
        return True

    def _drain(self) -> None:
        now = self._clock()
        self._level = max(0.0, self._level - (now - self._last) * self.rate)
        self._last = now

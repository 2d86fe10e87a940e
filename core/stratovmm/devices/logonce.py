"""Log a fault once per kind, then only count it.

A hostile guest can repeat a bad request millions of times a second (virtio 1.2
§2.7: the device must not trust the driver), and a host failure it provokes (an
I/O error, a refused ``madvise``) repeats as often; a log line each time would
fill the disk and cost more than the request.  So whoever meets such a fault
counts every occurrence in its own counter (``query-stats`` reports them) and
logs only the first of each *kind*: a name the code chooses, with at most a
bounded detail such as an errno.  ``LogOnce`` is that memory.  It keeps at most
``MAX_KINDS`` kinds, so even a kind built from input cannot grow it without
bound; past that, new kinds are counted by the caller but not logged.
"""

from __future__ import annotations

import logging

MAX_KINDS = 64


class LogOnce:
    """Logs through ``logger`` the first fault of each kind; later ones return False."""

    def __init__(self, logger: logging.Logger, limit: int = MAX_KINDS) -> None:
        self.logger = logger
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, kind: str, level: int, message: str, *args: object,
                 exc_info: bool = False) -> bool:
        """Log ``message % args`` at ``level`` if no fault of ``kind`` was logged yet
        (and fewer than the limit of kinds were); True when it logged."""
        if kind in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(kind)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True

"""Logging as StratoVirt does it: ``-D [PATH]`` and ``STRATOVMM_LOG_LEVEL``.

Levels trace, debug, info, warn, error (default error); ``STRATOVIRT_LOG_LEVEL``
is read when ``STRATOVMM_LOG_LEVEL`` is not set.  One line per event with the
time, the thread and the module.  Without ``-D`` the log goes to stderr.
"""

from __future__ import annotations

import logging
import os
import sys

from stratovmm.errors import ConfigError

TRACE = 5
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def log_level() -> int:
    """The level named by the environment, default error."""
    logging.addLevelName(TRACE, "TRACE")
    name = os.environ.get("STRATOVMM_LOG_LEVEL") or os.environ.get("STRATOVIRT_LOG_LEVEL")
    if not name:
        return logging.ERROR
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"STRATOVMM_LOG_LEVEL: {name!r} is not one of"
                          " trace, debug, info, warn, error") from None


def setup_logging(path: str | None) -> None:
    """Log at the environment's level to ``path`` (appending) or to stderr."""
    level = log_level()
    if path is not None:
        try:
            handler: logging.Handler = logging.FileHandler(path)
        except OSError as exc:
            raise ConfigError(f"-D {path}: {exc.strerror}") from exc
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

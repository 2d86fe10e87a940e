"""Logging as StratoVirt does it: ``-D [PATH]`` and ``STRATOVMM_LOG_LEVEL``.

Levels trace, debug, info, warn, error (default error); ``STRATOVIRT_LOG_LEVEL``
is read when ``STRATOVMM_LOG_LEVEL`` is not set.  One line per event with the
time, the thread and the module::

    2026-11-26 07:20:18.366 INFO [MainThread] stratovmm.machine.microvm: VM shutting down: ...

"One line" is kept even for tracebacks and for messages that quote guest or
client data: every control character inside an event is written as a visible
escape (``\\n``, ``\\x1b``, ``\\u2028``), so nothing a guest sends can forge a
log line or hide one from a reader.  ``-D PATH`` appends to PATH, creating it
with mode 0600 whatever the umask (log lines quote guest and QMP data); ``-D``
alone and no ``-D`` at all log to stderr (at the default level only errors
appear).
"""

from __future__ import annotations

import io
import logging
import os
import sys

from stratovmm.errors import ConfigError

TRACE = 5
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}
ENV_VARS = ("STRATOVMM_LOG_LEVEL", "STRATOVIRT_LOG_LEVEL")
FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s [%(threadName)s] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def log_level() -> int:
    """The level named by the environment, default error."""
    logging.addLevelName(TRACE, "TRACE")
    logging.addLevelName(logging.WARNING, "WARN")
    for var in ENV_VARS:
        name = os.environ.get(var, "").strip()
        if name:
            break
    else:
        return logging.ERROR
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ConfigError(f"{var}: {name!r} is not one of trace, debug, info, warn,"
                          " error") from None


def _escapes() -> dict[int, str]:
    """What ``OneLineFormatter`` writes instead of each character a reader could be fooled by.

    C0 (line feed, carriage return, vertical tab, form feed, ESC sequences,
    backspace, the file/group/record separators ``str.splitlines`` ends lines
    at), DEL and C1 (NEL, and CSI, which terminals obey like ESC ``[``) are
    ISO 6429 control characters; U+2028/U+2029 end lines for Unicode readers;
    the bidirectional embeddings, overrides and isolates (U+202A-202E,
    U+2066-2069) reorder how the rest of a line is displayed.
    """
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    table = {c: named.get(c, f"\\x{c:02x}") for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F),
                                              *range(0x2066, 0x206A))})
    return table


_ESCAPES = _escapes()


class OneLineFormatter(logging.Formatter):
    """The standard layout, with every control character inside one event escaped."""

    def format(self, record: logging.LogRecord) -> str:
        """One line, whatever the message and the traceback contain."""
        return super().format(record).translate(_ESCAPES)


LOG_FILE_MODE = 0o600


class PrivateFileHandler(logging.FileHandler):
    """``logging.FileHandler`` that creates its file 0600 (the umask can only narrow that);
    an existing file keeps its mode."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(path: str | None) -> None:
    """Log at the environment's level to ``path`` (appending) or to stderr."""
    level = log_level()
    if path is not None:
        try:
            handler: logging.Handler = PrivateFileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"-D {path}: {exc.strerror}") from exc
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)


def log_fds() -> list[int]:
    """The fds the root logger writes to (for code that must log without Python)."""
    fds = []
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        try:
            fds.append(stream.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            continue
    return fds

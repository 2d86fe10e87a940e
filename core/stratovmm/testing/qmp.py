"""A small blocking QMP client for tests: raw bytes in, parsed lines out.

Unlike a full client (``qemu.qmp``) it lets a test send any bytes — half a
command, several at once, garbage, fds with SCM_RIGHTS — and read the server's
lines one by one.  Events that arrive while a test waits for a reply are kept
in ``events``.
"""

from __future__ import annotations

import array
import itertools
import json
import socket
import time
from collections.abc import Sequence
from typing import Any


def connect_unix(path: str, timeout: float = 30.0) -> socket.socket:
    """Connect to ``path``, retrying while the server is not listening yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class QmpTestClient:
    """One QMP connection; ``greeting`` is read on connect."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = connect_unix(path, timeout)
        self.timeout = timeout
        self._buf = b""
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.greeting = self.read_message()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> QmpTestClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- raw bytes ------------------------------------------------------------------

    def send_bytes(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send ``data`` (with ``fds`` as SCM_RIGHTS on the first byte)."""
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = self.sock.sendmsg([data], ancillary)
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def read_line(self, timeout: float | None = None) -> bytes:
        """The next line from the server, with its CR LF; ``EOFError`` if it hung up."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no line from the QMP server")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP server closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line + b"\n"

    def read_message(self, timeout: float | None = None) -> dict[str, Any]:
        """The next line, parsed."""
        message = json.loads(self.read_line(timeout))
        assert isinstance(message, dict), message
        return message

    def read_eof(self, timeout: float | None = None) -> bool:
        """True if the server closes the connection (after any remaining lines)."""
        try:
            while True:
                self.read_line(timeout)
        except EOFError:
            return True
        except TimeoutError:
            return False

    # -- commands and events --------------------------------------------------------------

    def reply(self, timeout: float | None = None) -> dict[str, Any]:
        """The next non-event message (events are kept in ``events``)."""
        while True:
            message = self.read_message(timeout)
            if "event" in message:
                self.events.append(message)
            else:
                return message

    def command(self, name: str, arguments: dict[str, Any] | None = None,
                fds: Sequence[int] = ()) -> dict[str, Any]:
        """Run a command; returns the whole reply (``return`` or ``error``, with its id)."""
        request: dict[str, Any] = {"execute": name, "id": next(self._ids)}
        if arguments is not None:
            request["arguments"] = arguments
        self.send_bytes(json.dumps(request).encode(), fds)
        reply = self.reply()
        assert reply.get("id") == request["id"], reply
        return reply

    def wait_event(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """The first event called ``name`` (already received or arriving within timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for index, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(index)
            message = self.read_message(max(0.0, deadline - time.monotonic()))
            if "event" not in message:
                raise AssertionError(f"unexpected reply while waiting for {name}: {message}")
            self.events.append(message)

"""Split a QMP byte stream into JSON values, with bounded memory.

QMP requests are a stream of JSON objects, with or without newlines between
them, several per read or one split across reads (QEMU's JSON streamer reads
them so).  A QMP client owes us no delimiter, so the splitter tracks just
enough JSON lexical state (nesting depth, inside-a-string, after-a-backslash)
to see where a top-level value ends, then hands that value's bytes to
``json.loads``.  Runs the scanner would otherwise step through a byte at a
time — a string's characters and escape pairs, a run of opening or closing
brackets — are taken in one regex step, so a hostile 64 KiB of ``\\"`` or
``[[[[`` costs a few milliseconds, not a Python loop per byte.

Bad input never stops the stream:

* A value that does not parse (``{"a":}``) is answered with ``BadInput`` and
  scanning goes on after it.
* A value larger than ``max_size`` bytes is refused as soon as it crosses the
  limit; its bytes are dropped, not buffered, while the scanner follows it to
  its real end, and the next value is read normally (resync, the client stays
  connected).  Memory per client stays under ``max_size`` plus one read.
* Nesting deeper than ``max_depth`` is refused the same way (``json.loads``
  would hit Python's recursion limit long before the size limit).
* A byte that can never occur in JSON text — an ASCII control character other
  than TAB, CR, LF, or 0xFE/0xFF (never valid UTF-8) — discards the value in
  progress and puts the scanner back between values.  This is QEMU's documented
  way to resynchronise a confused parser (qmp-spec, "Forcing the JSON parser
  into known-good state"), and it also rescues a client that left an object
  unclosed.
* A top-level scalar (``42``, ``"x"``, ``true``) is returned as such; the
  dispatcher answers that input must be an object.  A bare scalar ends at the
  next whitespace or structural character.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024
MAX_NESTING = 64

_BAD = rb"\x00-\x08\x0b\x0c\x0e-\x1f\xfe\xff"
_BAD_BYTE = re.compile(b"[" + _BAD + b"]")
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_VALUE_STOP = re.compile(rb'[{}\[\]"' + _BAD + b"]")
_STRING_STOP = re.compile(rb'["\\' + _BAD + b"]")
_PLAIN = rb'[^"\\' + _BAD + rb"]*"          # string characters that need no attention
_STRING_BODY = re.compile(_PLAIN + rb"(?:\\[^" + _BAD + rb"]" + _PLAIN + rb")*")
_BARE_STOP = re.compile(rb'[ \t\r\n{}\[\]",:' + _BAD + b"]")
_LONE_PUNCTUATION = frozenset(b"}],:")
_OPENERS = re.compile(rb"[\[{]+")
_CLOSERS = re.compile(rb"[\]}]+")


@dataclass(frozen=True)
class Message:
    """One complete top-level JSON value (any type; QMP wants an object)."""

    value: Any


@dataclass(frozen=True)
class BadInput:
    """Input that is not a JSON value; ``desc`` says why (it becomes a GenericError)."""

    desc: str


Frame = Message | BadInput


class _Mode(enum.Enum):
    IDLE = "idle"      # between values
    VALUE = "value"    # inside an object, array or top-level string
    BARE = "bare"      # inside a top-level number or literal


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


class JsonStreamSplitter:
    """``feed(bytes)`` returns the values (and errors) completed by those bytes."""

    def __init__(self, max_size: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_NESTING) -> None:
        self.max_size = max_size
        self.max_depth = max_depth
        self._mode = _Mode.IDLE
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._oversize = False
        self._too_deep = False
        self._bad_run = False
        self._out: list[Frame] = []

    @property
    def buffered(self) -> int:
        """Bytes held for the value in progress (never more than ``max_size``)."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """True between values (nothing partial is pending)."""
        return self._mode is _Mode.IDLE

    def feed(self, data: bytes) -> list[Frame]:
        """Scan ``data``; return what it completed, in stream order."""
        self._out = []
        i, n = 0, len(data)
        while i < n:
            if self._mode is _Mode.IDLE:
                i = self._scan_idle(data, i)
            elif self._mode is _Mode.VALUE:
                i = self._scan_value(data, i)
            else:
                i = self._scan_bare(data, i)
        return self._out

    # -- states ---------------------------------------------------------------

    def _scan_idle(self, data: bytes, i: int) -> int:
        i = _WHITESPACE.match(data, i).end()  # type: ignore[union-attr]
        if i >= len(data):
            return i
        byte = data[i]
        if _BAD_BYTE.match(data, i):
            if not self._bad_run:
                self._out.append(BadInput(f"JSON parse error: invalid byte 0x{byte:02x}"))
                self._bad_run = True
            return i + 1
        self._bad_run = False
        self._begin()
        if byte in b"{[\"":
            self._mode = _Mode.VALUE
        elif byte in _LONE_PUNCTUATION:
            self._capture(data[i:i + 1])
            self._complete()
            return i + 1
        else:
            self._mode = _Mode.BARE
        return i

    def _scan_value(self, data: bytes, i: int) -> int:
        start, n = i, len(data)
        while i < n:
            if self._escape:
                self._escape = False
                i += 1
                continue
            if self._in_string:           # plain characters and escape pairs in one step
                i = _STRING_BODY.match(data, i).end()  # type: ignore[union-attr]
            match = (_STRING_STOP if self._in_string else _VALUE_STOP).search(data, i)
            if match is None:
                i = n
                break
            j = match.start()
            byte = data[j]
            i = j + 1
            if _BAD_BYTE.match(data, j):
                self._capture(data[start:j])  # the size limit must not depend on the split
                self._lexical_reset(byte)
                return i
            if self._in_string:
                if byte == ord("\\"):
                    self._escape = True
                    continue
                self._in_string = False
            elif byte == ord('"'):
                self._in_string = True
                continue
            elif byte in b"{[":
                i = _run_end(_OPENERS, data, j)     # a run at once: deep nesting is cheap
                self._depth += i - j
                self._too_deep = self._too_deep or self._depth > self.max_depth
                continue
            else:
                closers = _run_end(_CLOSERS, data, j) - j
                if closers < self._depth:
                    self._depth -= closers
                    i = j + closers
                    continue
                i = j + self._depth                 # the closer that ends the value
                self._depth = 0
            if self._depth == 0:
                self._capture(data[start:i])
                self._complete()
                return i
        self._capture(data[start:i])
        return i

    def _scan_bare(self, data: bytes, i: int) -> int:
        match = _BARE_STOP.search(data, i)
        end = len(data) if match is None else match.start()
        self._capture(data[i:end])
        if match is not None:
            self._complete()
        return end

    # -- the value in progress ----------------------------------------------------

    def _begin(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._oversize = False
        self._too_deep = False

    def _capture(self, chunk: bytes) -> None:
        if self._oversize:
            return
        if len(self._buf) + len(chunk) > self.max_size:
            self._oversize = True
            self._buf = bytearray()
            self._out.append(BadInput(f"message larger than {self.max_size} bytes: discarded"))
            return
        self._buf += chunk

    def _complete(self) -> None:
        self._mode = _Mode.IDLE
        text, self._buf = bytes(self._buf), bytearray()
        if self._oversize:
            return
        if self._too_deep:
            self._out.append(BadInput(f"JSON nesting deeper than {self.max_depth}"))
            return
        self._out.append(decode(text))

    def _lexical_reset(self, byte: int) -> None:
        self._mode = _Mode.IDLE
        self._buf = bytearray()
        self._bad_run = True
        self._out.append(BadInput(f"JSON parse error: invalid byte 0x{byte:02x};"
                                  " message discarded"))


def _run_end(pattern: re.Pattern[bytes], data: bytes, i: int) -> int:
    """The end of the run of ``pattern``'s bytes that starts at ``data[i]`` (one of them)."""
    match = pattern.match(data, i)
    return i + 1 if match is None else match.end()


def decode(text: bytes) -> Frame:
    """One value's bytes → ``Message``, or ``BadInput`` saying what is wrong."""
    try:
        return Message(json.loads(text, parse_constant=_reject_constant,
                                  parse_float=_finite_float))
    except json.JSONDecodeError as exc:
        return BadInput(f"JSON parse error: {exc.msg} at byte {exc.pos}")
    except UnicodeDecodeError:
        return BadInput("JSON parse error: input is not valid UTF-8")
    except (ValueError, RecursionError) as exc:
        return BadInput(f"JSON parse error: {exc}")

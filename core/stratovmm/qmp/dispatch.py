"""From a parsed request to a reply: envelope checks, flow control, command lookup,
argument schema, handler.

The order is the contract: nothing a command does happens before its
arguments passed its JSON schema, and every reply — errors included — carries
the request's ``id`` when the request was an object that had one.  Commands
are looked up in the ``QmpRegistry`` at call time, so whatever the core or a
plugin registers (``device_add`` from the core's hotplug code, ``blockdev-add``
from the blk plugin) is dispatched the same way with no change here.

Flow control comes first, as in StratoVirt (its ``LeakBucket``): one token bucket per
VM (``TokenBucket``: ``rate`` commands per second, bursts of up to one second's worth)
admits each request, whichever client sent it; a request that finds it empty is
answered ``OperationThrottled`` and takes nothing, so a client that keeps to the rate
is never refused and a flood gets exactly the rate through.

Handlers run on the main loop thread, one at a time.  A handler that needs the
connection the request came on (``getfd`` takes the fd the client passed with
``SCM_RIGHTS``) reads it with ``current_session()``.
"""

from __future__ import annotations

import collections
import contextvars
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.config import schema
from stratovmm.config.model import QMP_COMMANDS_PER_SECOND
from stratovmm.conforms import conforms
from stratovmm.devices.ratelimit import TokenBucket
from stratovmm.errors import StratoVmmError
from stratovmm.qmp.errors import CommandNotFound, GenericError, OperationThrottled, QmpError
from stratovmm.qmp.framing import BadInput, Frame

if TYPE_CHECKING:
    import jsonschema

    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import QmpCommand, QmpRegistry

log = logging.getLogger(__name__)

REQUEST_MEMBERS = frozenset({"execute", "arguments", "id"})
MAX_RECEIVED_FDS = 16

_NO_ID = object()


class Session:
    """One client connection as a command sees it: the fds it passed and not yet claimed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._fds: collections.deque[int] = collections.deque()

    def add_received_fds(self, fds: Iterable[int]) -> int:
        """Keep fds that came with SCM_RIGHTS (oldest first); close and count any beyond
        ``MAX_RECEIVED_FDS``."""
        dropped = 0
        for fd in fds:
            if len(self._fds) < MAX_RECEIVED_FDS:
                self._fds.append(fd)
            else:
                os.close(fd)
                dropped += 1
        return dropped

    def take_received_fd(self) -> int | None:
        """The oldest unclaimed fd, now owned by the caller; None when there is none."""
        return self._fds.popleft() if self._fds else None

    @property
    def received_fd_count(self) -> int:
        """Unclaimed fds held for this connection."""
        return len(self._fds)

    def close(self) -> None:
        """Close every unclaimed fd (the connection is gone)."""
        while self._fds:
            os.close(self._fds.popleft())


_current_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "qmp_session", default=None)


def current_session() -> Session | None:
    """The connection whose request is being handled (None outside a handler)."""
    return _current_session.get()


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """One reply or event on the wire: compact JSON, one line ending in CR LF."""
    text: str = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.encode() + b"\r\n"


class Dispatcher:
    """Runs requests against the registered commands of one VM."""

    def __init__(self, registry: QmpRegistry, vm: VmApi, bucket: TokenBucket | None = None
                 ) -> None:
        self.registry = registry
        self.vm = vm
        self.bucket = bucket or TokenBucket(QMP_COMMANDS_PER_SECOND)
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def handle(self, frame: Frame, session: Session) -> bytes:
        """The reply line for one frame from the stream."""
        if isinstance(frame, BadInput):
            return encode_line({"error": GenericError(frame.desc).to_qmp()})
        reply = self.execute(frame.value, session)
        try:
            return encode_line(reply)
        except (TypeError, ValueError) as exc:
            log.error("QMP reply is not JSON: %s", exc)
        error = GenericError("internal error: the reply is not JSON")
        try:
            return encode_line(self._error_reply(error, reply.get("id", _NO_ID)))
        except (TypeError, ValueError):
            return encode_line(self._error_reply(error, _NO_ID))

    def execute(self, request: Any, session: Session) -> dict[str, Any]:
        """The reply object for one decoded request."""
        if not isinstance(request, dict):
            return self._error_reply(GenericError("QMP input must be a JSON object"), _NO_ID)
        request_id = request.get("id", _NO_ID)
        try:
            if not self.bucket.take(1):
                raise OperationThrottled("QMP flow control: more than"
                                         f" {self.bucket.rate:g} commands per second")
            command, arguments = self._check_request(request)
            result = self._run(command, arguments, session)
        except QmpError as exc:
            return self._error_reply(exc, request_id)
        reply: dict[str, Any] = {"return": {} if result is None else result}
        if request_id is not _NO_ID:
            reply["id"] = request_id
        return reply

    def _check_request(self, request: dict[str, Any]) -> tuple[QmpCommand, dict[str, Any]]:
        unexpected = sorted(set(request) - REQUEST_MEMBERS)
        if unexpected:
            raise GenericError(f"QMP input member '{unexpected[0]}' is unexpected")
        if "execute" not in request:
            raise GenericError("QMP input lacks member 'execute'")
        name = request["execute"]
        if not isinstance(name, str):
            raise GenericError("QMP input member 'execute' must be a string")
        arguments = request.get("arguments", {})
        if not isinstance(arguments, dict):
            raise GenericError("QMP input member 'arguments' must be an object")
        command = self.registry.commands.get(name)
        if command is None:
            raise CommandNotFound(f"The command {name} has not been found")
        if conforms(command.schema, arguments):
            return command, arguments
        message = schema.problem(self._validator(command), arguments, schema.under(name))
        if message is not None:
            raise GenericError(message)
        return command, arguments

    def _validator(self, command: QmpCommand) -> jsonschema.protocols.Validator:
        validator = self._validators.get(command.name)
        if validator is None:
            # the config's validator: integers are Python ints (a float would reach
            # handlers that index or count with it)
            validator = schema.Validator(command.schema)
            self._validators[command.name] = validator
        return validator

    def _run(self, command: QmpCommand, arguments: dict[str, Any], session: Session) -> Any:
        token = _current_session.set(session)
        try:
            return command.handler(self.vm, arguments)
        except QmpError:
            raise
        except StratoVmmError as exc:
            raise GenericError(str(exc)) from exc
        except Exception as exc:
            log.exception("QMP command %s failed", command.name)
            raise GenericError(f"{command.name}: internal error: {exc}") from exc
        finally:
            _current_session.reset(token)

    @staticmethod
    def _error_reply(error: QmpError, request_id: Any) -> dict[str, Any]:
        reply: dict[str, Any] = {"error": error.to_qmp()}
        if request_id is not _NO_ID:
            reply["id"] = request_id
        return reply

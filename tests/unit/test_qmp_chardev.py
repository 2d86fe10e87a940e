"""QMP ``query-chardev``: each open ``-chardev pty`` as StratoVirt 2.x and QEMU list it (label,
``filename`` ``pty:/dev/pts/N``, ``frontend-open``), gone once the pty is closed."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from stratovmm.devices.ratelimit import TokenBucket
from stratovmm.host.pty import Pty
from stratovmm.qmp.commands import register_core_commands
from stratovmm.qmp.dispatch import Dispatcher, Session
from stratovmm.qmp.framing import Message
from stratovmm.registry import QmpRegistry


def query(dispatcher: Dispatcher) -> Any:
    session = Session("test")
    try:
        reply = json.loads(dispatcher.handle(Message({"execute": "query-chardev", "id": 1}),
                                             session))
    finally:
        session.close()
    assert reply["id"] == 1
    return reply["return"]


def test_open_ptys_are_listed_and_closed_ones_are_not(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Two ptys are listed in opening order with their labels and pty: paths; closing one
    removes it from the answer."""
    registry = QmpRegistry()
    register_core_commands(registry)
    dispatcher = Dispatcher(registry, cast(Any, object()), TokenBucket(100))
    before = query(dispatcher)
    first, second = Pty("cpty"), Pty("cser")
    try:
        assert query(dispatcher)[len(before):] == [
            {"label": "cpty", "filename": f"pty:{first.path}", "frontend-open": True},
            {"label": "cser", "filename": f"pty:{second.path}", "frontend-open": True}]
        first.close()
        assert query(dispatcher)[len(before):] == [
            {"label": "cser", "filename": f"pty:{second.path}", "frontend-open": True}]
    finally:
        first.close()
        second.close()
    assert query(dispatcher) == before
    assert "char device redirected to" in capsys.readouterr().err

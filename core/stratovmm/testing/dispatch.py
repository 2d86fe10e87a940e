"""Run QMP requests through the core's real dispatcher, in-process, for tests.

``execute_qmp(plugins, vm, "balloon", {"value": 1})`` sends one request through
what a QMP client reaches: the core's and the plugins' commands, each request's
arguments checked against the command's schema before its handler runs, and
errors turned into QMP error classes.  It returns the whole reply (``return`` or
``error``, with the request's id).  ``vm`` is what the handlers get: usually a
small stand-in with the few ``VmApi`` members the plugin's handlers use.  No
socket, no VM, no KVM.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from stratovmm.qmp.dispatch import Dispatcher, Session
from stratovmm.testing.config import plugin_registry


def execute_qmp(plugins: Mapping[str, types.ModuleType], vm: Any, name: str,
                arguments: dict[str, Any] | None = None, request_id: Any = 1) -> dict[str, Any]:
    """The reply to ``{"execute": name, "arguments": arguments, "id": request_id}``."""
    request: dict[str, Any] = {"execute": name, "id": request_id}
    if arguments is not None:
        request["arguments"] = arguments
    return Dispatcher(plugin_registry(plugins).qmp, vm).execute(request, Session("test"))

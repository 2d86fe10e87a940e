"""Run the core's configuration pipeline with chosen plugins, in-process, for tests.

``plugin_registry({"name": module})`` is what ``stratovmm`` builds at start-up: the
core's options and QMP commands, then the plugins' registrations (so a duplicate
name or a non-strict schema fails here as it would at start-up).
``parse_config(argv, plugins)`` parses a command line (and the ``-config`` file it
names) exactly as ``stratovmm`` does, runs the plugins' ``vmm_check_config``, and
returns the merged ``VmConfig``; a bad option raises ``ConfigError`` with the
message the user would see (``stratovmm: MESSAGE`` on stderr, exit status 2).
No VM is built and nothing touches KVM.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence

from stratovmm.cli import core_registry
from stratovmm.config.load import load_config
from stratovmm.config.model import VmConfig
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry


def plugin_host(plugins: Mapping[str, types.ModuleType]) -> PluginHost:
    """A ``PluginHost`` over exactly ``plugins`` (entry point name → plugin module); the API
    version of each is checked as at start-up."""
    return PluginHost(dict(plugins))


def plugin_registry(plugins: Mapping[str, types.ModuleType]) -> Registry:
    """The core's registry with ``plugins`` registered into it."""
    return plugin_host(plugins).register(core_registry())


def parse_config(argv: Sequence[str], plugins: Mapping[str, types.ModuleType]) -> VmConfig:
    """``argv`` through the parser, the JSON file, the merge, the schema and every plugin's
    ``vmm_check_config``.  The kernel path need not exist."""
    host = plugin_host(plugins)
    registry = host.register(core_registry())
    config = load_config(list(argv), registry.devices)
    host.check_config(config.document, config.runtime)
    return config

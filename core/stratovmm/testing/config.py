"""Run the core's configuration pipeline with chosen plugins, in-process, for tests.

``plugin_registry({"name": module})`` is what ``stratovmm`` builds at start-up: the
core's options and QMP commands, then the plugins' registrations (so a duplicate
name or a non-strict schema fails here as it would at start-up).
``parse_config(argv, plugins)`` parses a command line (and the ``-config`` file it
names) exactly as ``stratovmm`` does, runs the plugins' ``vmm_check_config``, and
returns the merged ``VmConfig``; a bad option raises ``ConfigError`` with the
message the user would see (``stratovmm: MESSAGE`` on stderr, exit status 2).
``help_text(plugins)`` is what ``--help`` prints, and ``run_main(argv, plugins)``
runs the ``stratovmm`` command's ``main`` itself (its exit status; messages on
stderr).  No VM is built and nothing touches KVM, except by ``run_main`` given a
configuration that passes every check.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence

from stratovmm import cli
from stratovmm.config.help import render_help
from stratovmm.config.load import load_config
from stratovmm.config.model import VmConfig
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry


def plugin_host(plugins: Mapping[str, types.ModuleType]) -> PluginHost:
    """A ``PluginHost`` over exactly ``plugins`` (entry point name → plugin module); the API
    version of each is checked as at start-up."""
    return PluginHost(dict(plugins))


def plugin_registry(plugins: Mapping[str, types.ModuleType]) -> Registry:
    """The core's registry with ``plugins`` registered into it (and ``device_add`` over
    their hotplug drivers)."""
    return cli.build_registry(plugin_host(plugins))


def parse_config(argv: Sequence[str], plugins: Mapping[str, types.ModuleType]) -> VmConfig:
    """``argv`` through the parser, the JSON file, the merge, the schema and every plugin's
    ``vmm_check_config``.  The kernel path need not exist."""
    host = plugin_host(plugins)
    registry = cli.build_registry(host)
    config = load_config(list(argv), registry.devices)
    host.check_config(config.document, config.runtime)
    return config


def help_text(plugins: Mapping[str, types.ModuleType]) -> str:
    """What ``stratovmm --help`` prints with exactly ``plugins`` installed."""
    return render_help(plugin_registry(plugins).devices)


def run_main(argv: Sequence[str], plugins: Mapping[str, types.ModuleType]) -> int:
    """Run the ``stratovmm`` command in this process with exactly ``plugins`` installed;
    returns its exit status (2 and ``stratovmm: MESSAGE`` on stderr for bad input)."""
    return cli.main(list(argv), plugins)

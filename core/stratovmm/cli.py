"""``stratovmm``: discover plugins, assemble the parser and schema, build, run."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Mapping

from stratovmm import __version__
from stratovmm.boot.loader import check_boot_files
from stratovmm.config.cmdline import named_options
from stratovmm.config.core_options import CORE_OPTIONS
from stratovmm.config.load import load_config, parse_command_line
from stratovmm.errors import ConfigError, HostError, PluginError, StratoVmmError
from stratovmm.host import gcpause
from stratovmm.host.logsetup import setup_logging
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry

log = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_FAILURE = 1

# the options the core reads itself, as plugins declare theirs (stratovmm.plugin.CLAIMS)
CORE_CLAIMS = frozenset(option.display for option in CORE_OPTIONS)


def core_registry(qmp: bool = True) -> Registry:
    """A registry holding the core's own options (and, with ``qmp``, QMP commands)."""
    registry = Registry()
    for option in CORE_OPTIONS:
        registry.devices.add_option(option)
    if qmp:
        from stratovmm.qmp.commands import register_core_commands

        register_core_commands(registry.qmp)
    return registry


def build_registry(host: PluginHost, qmp: bool = True) -> Registry:
    """The core's options, every plugin's devices and, with ``qmp``, the QMP commands."""
    registry = host.register(core_registry(qmp=False), qmp=False)
    if qmp:
        add_qmp_commands(host, registry)
    return registry


def add_qmp_commands(host: PluginHost, registry: Registry) -> None:
    """The core's commands, every plugin's, then ``device_add`` / ``device_del`` over the
    hotplug drivers the plugins registered.  Only a VM that serves QMP needs them, so the
    CLI adds them once the configuration says it does (and saves the others the imports)."""
    from stratovmm.machine.hotplug import register_hotplug_commands
    from stratovmm.qmp.commands import register_core_commands

    register_core_commands(registry.qmp)
    host.register_qmp(registry)
    register_hotplug_commands(registry.qmp, registry.devices.hotplug_drivers.values())


def report(exc: Exception) -> None:
    """One line on stderr; also in the -D log file, which is where a daemon's stderr
    (/dev/null after detaching) would otherwise lose it."""
    print(f"stratovmm: {exc}", file=sys.stderr)
    if any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
        log.error("%s", exc)


def main(argv: list[str] | None = None,
         plugins: Mapping[str, types.ModuleType] | None = None) -> int:
    """Run one VM with every installed plugin (or exactly ``plugins``: entry point name →
    module); returns the exit status: 0 when the guest powers off or QMP quits, 2 for bad
    user input or a broken plugin, 1 for a host or VM failure."""
    args = sys.argv[1:] if argv is None else argv
    gcpause.pause()  # until the VM runs (stratovmm.machine.runner) or start-up ends
    try:
        host = (PluginHost.discover(named_options(args), CORE_CLAIMS) if plugins is None
                else PluginHost(dict(plugins)))
        registry = build_registry(host, qmp=False)
        parsed = parse_command_line(args, registry.devices)
        if parsed.help:
            from stratovmm.config.help import render_help

            sys.stdout.write(render_help(registry.devices))
            return 0
        if parsed.version:
            print(f"StratoVMM {__version__}")
            return 0
        config = load_config(args, registry.devices, parsed)
        if config.runtime.api_channel is not None:
            add_qmp_commands(host, registry)
        check_boot_files(config.boot.kernel, config.boot.initrd)
        setup_logging(config.runtime.log_path)
        host.check_config(config.document, config.runtime)
        from stratovmm.machine.runner import run_vm

        return run_vm(config, host, registry)
    except (ConfigError, PluginError) as exc:
        report(exc)
        return EXIT_USAGE
    except (HostError, StratoVmmError) as exc:
        report(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    finally:
        gcpause.resume()


if __name__ == "__main__":
    sys.exit(main())

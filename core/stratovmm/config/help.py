"""``--help``: every option of the core and of the installed plugins."""

from __future__ import annotations

from stratovmm import __version__
from stratovmm.registry import DeviceRegistry, OptionSpec


def _line(option: OptionSpec) -> str:
    metavar = option.metavar
    if option.driver and metavar.startswith(f"{option.driver}:"):    # -serial chardev:ID
        left = f"  -{option.name} {metavar}"
    elif option.driver and metavar:        # -device vsock,id=...  /  -device boot-timer[,addr=A]
        metavar = "[," + metavar[1:] if metavar.startswith("[") else "," + metavar
        left = f"  {option.display}{metavar}"
    else:
        left = f"  {option.display} {metavar}".rstrip()
    if len(left) < 34:
        return f"{left:<34}{option.help}"
    return f"{left}\n{'':<34}{option.help}"


def render_help(devices: DeviceRegistry) -> str:
    """Usage text grouped by the plugin that contributed each option."""
    groups: dict[str, list[OptionSpec]] = {}
    for option in devices.options.values():
        groups.setdefault(devices.owner.get(option.display, "core"), []).append(option)
    lines = [f"StratoVMM {__version__}: a microVM monitor driven like StratoVirt",
             "usage: stratovmm -kernel PATH [-append ARGS...] [OPTIONS]", "", "Core options:"]
    lines += [_line(o) for o in groups.pop("core", [])]
    lines.append("  -h, --help                      show this help and exit")
    lines.append("  -V, -version, --version         print the name and version and exit")
    for plugin in sorted(groups):
        lines += ["", f"From plugin {plugin}:"]
        lines += [_line(o) for o in groups[plugin]]
    lines += ["", "Booleans take on|off or true|false; sizes take K, M or G suffixes.",
              "The JSON file (-config) holds the same settings; the command line wins."]
    return "\n".join(lines) + "\n"

"""The example out-of-tree plugin (examples/boot-timer), installed into the fresh contract
venv beside a core built from this tree: its option, JSON key, QMP command, event and
device work with no change to the core, and its own test suite passes there.  Also: a
plugin written for another plugin API version is refused at load, through the real
stevedore discovery of the venv's ``stratovmm``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from venvtools import Venv, find_modules

from stratovmm.plugin import API_VERSION
from stratovmm.testing.fixtures import build_pvh_guest_or_skip
from stratovmm.testing.vm import RunningVm

SIGNAL_AND_HALT = """
main:
    movb $123, 0xd3000000
    jmp halt
"""


@pytest.fixture(scope="module")
def signal_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny guest that stores 123 at 0xd3000000 and halts (a real ELF: the core checks the
    kernel before the plugins check their options)."""
    return build_pvh_guest_or_skip(tmp_path_factory.mktemp("guest"), "signal", SIGNAL_AND_HALT)


def test_example_is_installed_in_the_venv_only(contract_venv: Venv) -> None:
    """The venv's boot-timer plugin comes from its own site-packages, not from examples/."""
    (origin,) = find_modules(contract_venv.python, ("stratovmm_boot_timer",))
    assert origin is not None and origin.startswith(str(contract_venv.path)), origin


def test_help_lists_the_example_option(contract_venv: Venv) -> None:
    """--help lists -device boot-timer under the plugin's name."""
    proc = contract_venv.stratovmm("--help")
    assert proc.returncode == 0, proc.stderr
    assert "From plugin boot-timer:" in proc.stdout
    assert "-device boot-timer[,addr=ADDR]" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-device", "boot-timer,addr=0x10"],
     "-device boot-timer addr: 0x10 is not 4 KiB aligned"),
    (["-device", "boot-timer,at=0xd1000000"],
     "-device boot-timer: unknown key 'at' (known: addr)"),
    (["-device", "boot-tmer"],
     "-device: unknown device driver 'boot-tmer' (no installed plugin provides it;"
     " known: boot-timer)"),
])
def test_example_option_errors_name_it(contract_venv: Venv, signal_guest: Path,
                                       args: list[str], message: str) -> None:
    """The core parses the plugin's option; the plugin's schema and check name it; exit 2."""
    proc = contract_venv.stratovmm("-kernel", str(signal_guest), *args)
    assert (proc.returncode, proc.stderr) == (2, f"stratovmm: {message}\n")


def test_example_json_key_is_in_the_schema(contract_venv: Venv, tmp_path: Path) -> None:
    """"boot_timer" is a known JSON key, checked against the plugin's strict schema."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": "/k"},
                                  "boot_timer": {"addr": "0xd1000000", "irq": 5}}))
    proc = contract_venv.stratovmm("-config", str(config))
    assert proc.returncode == 2
    assert proc.stderr == (f"stratovmm: config file {config}: boot_timer: unknown key 'irq'"
                           " (known: addr)\n")


def test_example_device_command_and_event_in_a_vm(contract_venv: Venv, kvm_available: None,
                                                  signal_guest: Path, tmp_path: Path) -> None:
    """A tiny guest stores 123 at the address the JSON file gives: the venv's VMM lists the
    plugin's command and event, emits BOOT_TIMER, answers query-boot-time and counts the
    store in query-stats."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": str(signal_guest)},
                                  "boot_timer": {"addr": 0xD300_0000}}))
    socket = tmp_path / "qmp.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    vm = RunningVm([str(contract_venv.path / "bin" / "stratovmm"), "-config", str(config),
                    "-freeze", "-api-channel", f"unix:{socket}"], env, socket, tmp_path)
    try:
        qmp = vm.qmp()
        commands = {c["name"] for c in qmp.command("query-commands")["return"]}
        assert {"query-boot-time", "query-stats"} <= commands
        schema = qmp.command("query-qmp-schema")["return"]
        assert any(e["name"] == "BOOT_TIMER" and e["meta-type"] == "event" for e in schema)
        assert any(e["name"] == "query-boot-time" and e["meta-type"] == "command"
                   for e in schema)
        qmp.command("cont")
        data = qmp.wait_event("BOOT_TIMER", timeout=20)["data"]
        assert qmp.command("query-boot-time")["return"] == {"booted": True, "signals": 1,
                                                            **data}
        (timer,) = qmp.command("query-stats", {"devices": ["boot-timer"]})["return"]
        assert {"name": "requests", "value": 1} in timer["stats"]
        qmp.command("quit")
        assert vm.wait() == 0
    finally:
        vm.close()


def test_example_own_tests_pass_in_the_venv(contract_venv: Venv, example_copy: Path) -> None:
    """The plugin's own suite (unit, plugin and VM tests) passes against the installed core,
    using the fixtures the core ships as a pytest plugin."""
    proc = contract_venv.run(str(contract_venv.python), "-m", "pytest", "-q", "-p",
                             "no:cacheprovider", str(example_copy / "tests"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout, proc.stdout
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert " skipped" not in proc.stdout, proc.stdout      # the VM tests ran too


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_example_is_lint_and_type_clean(contract_venv: Venv, example_copy: Path,
                                        tool: str) -> None:
    """ruff check and mypy --strict pass on the example with its own pyproject settings, the
    core's types read from the venv where it is installed as users get it."""
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed")
    args = (["check", "."] if tool == "ruff" else
            ["--python-executable", str(contract_venv.python), "stratovmm_boot_timer", "tests"])
    proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=example_copy,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the plugin API version, through the real discovery path ------------------------------


def discoverable(site: Path, name: str, source: str) -> dict[str, str]:
    """Make module ``stratovmm_apitest_<name>`` (``source``) a plugin of the venv's
    ``stratovmm``: the module and a ``*.dist-info`` with its entry point, on PYTHONPATH."""
    module = f"stratovmm_apitest_{name.replace('-', '_')}"
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[stratovmm.devices]\n{name} = {module}\n")
    return {"PYTHONPATH": str(site)}


@pytest.mark.parametrize(("declared", "message"), [
    ('"2.0"', f"plugin future: written for plugin API 2.0, this core provides {API_VERSION};"
              " install a matching version of the plugin"),
    ('"1.9"', f"plugin future: written for plugin API 1.9, this core provides {API_VERSION};"
              " install a matching version of the plugin"),
    (None, "plugin future: does not declare STRATOVMM_API (the plugin API version it was"
           f" written for; this core provides {API_VERSION})"),
])
def test_incompatible_api_version_is_refused_at_load(contract_venv: Venv, tmp_path: Path,
                                                     declared: str | None, message: str) -> None:
    """A plugin built for another major version, a newer minor, or no version stops
    start-up (even --help) with one line naming it and both versions; exit 2."""
    source = "from stratovmm.plugin import hookimpl\n"
    if declared is not None:
        source += f"STRATOVMM_API = {declared}\n"
    env = discoverable(tmp_path, "future", source)
    proc = contract_venv.stratovmm("--help", env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"stratovmm: {message}\n")


def test_compatible_api_version_is_loaded(contract_venv: Venv, tmp_path: Path) -> None:
    """The same module declaring this core's version (or an older minor) loads fine."""
    env = discoverable(tmp_path, "current", 'STRATOVMM_API = "1.0"\n')
    proc = contract_venv.stratovmm("--help", env=env)
    assert proc.returncode == 0, proc.stderr

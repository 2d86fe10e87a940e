"""Bad input on the command line and in the JSON file: one clear line naming the option
or key, a non-zero exit, never a traceback (issue 2, "Bad input")."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from boot_images import pvh_elf
from clirun import CliResult

EXIT_USAGE = 2


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    """A valid (tiny, 32-bit PVH) kernel file, so only the input under test is wrong."""
    path = tmp_path / "guest.elf"
    path.write_bytes(pvh_elf())
    return path


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Non-zero exit, exactly one ``stratovmm: ...`` line on stderr containing ``needles``."""
    assert result.rc == EXIT_USAGE, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("stratovmm: ")
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(("args", "needles"), [
    (["-m", "100M"], ["-m:", "100M is below the minimum 256M"]),
    (["-m", "600G"], ["-m:", "600G is above the maximum 512G"]),
    (["-m", "size=255M"], ["-m:", "below the minimum 256M"]),
    (["-m", "268435457"], ["-m:", "not a multiple of 4K"]),
    (["-m", "1T"], ["-m:", "'1T' is not a size"]),
    (["-smp", "0"], ["-smp:", "0 is below the minimum 1"]),
    (["-smp", "255"], ["-smp:", "255 is above the maximum 254"]),
    (["-smp", "cpus=two"], ["-smp:", "'two' is not an integer"]),
    (["-smp", "2,cpus=3"], ["-smp:", "cpus given twice"]),
    (["-mem-path", "hugepages"], ["-mem-path:", "must be an absolute path"]),
    (["-machine", "microvm,bogus=1"], ["-machine:", "unknown key 'bogus'"]),
    (["-machine", "pc"], ["-machine:", "must be one of microvm"]),
    (["-machine", "dump-guest-core=maybe"], ["-machine:", "'maybe' is not on/off/true/false"]),
    (["-iothread", "name=x"], ["-iothread:", "unknown key 'name'"]),
    (["-iothread", "id=a/b"], ["-iothread:", "must be letters, digits"]),
    (["-iothread", "id=t0", "-iothread", "id=t0"], ["-iothread:", "duplicate id 't0'"]),
    (["-api-channel", "tcp:1234"], ["-api-channel:", "is not unix:PATH"]),
    (["-widget", "size=3"], ["-widget:", "missing id="]),
    (["-widget", "id=w,size=1000"], ["-widget", "above the maximum 100"]),
    (["-gizmo", "id=g1", "-gizmo", "id=g2"], ["-gizmo:", "at most one"]),
    (["-bogus"], ["unknown option '-bogus'"]),
    (["-freeze", "now"], ["unexpected argument 'now'"]),
    (["stray"], ["unexpected argument 'stray'"]),
])
def test_bad_option_value_is_one_line(run_cli: Callable[..., CliResult], kernel: Path,
                                      args: list[str], needles: list[str]) -> None:
    """Each bad option value is refused with one line naming the option and the reason."""
    assert_one_line_error(run_cli("-kernel", str(kernel), *args), *needles)


@pytest.mark.parametrize("option", ["-kernel", "-initrd", "-smp", "-m", "-config", "-append"])
def test_option_without_value(run_cli: Callable[..., CliResult], option: str) -> None:
    """An option that needs a value and ends the command line says so by name."""
    assert_one_line_error(run_cli(option), f"{option}: needs a value")


@pytest.mark.parametrize("value", ["fast", "0", "1e7"])
def test_bad_qmp_rate_is_a_config_error(run_cli: Callable[..., CliResult], kernel: Path,
                                        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A bad ``STRATOVMM_QMP_RATE`` is refused with the options, before any VM is made."""
    monkeypatch.setenv("STRATOVMM_QMP_RATE", value)
    assert_one_line_error(run_cli("-kernel", str(kernel), "-api-channel", "unix:/nonexistent/q"),
                          f"STRATOVMM_QMP_RATE: {value!r} is not a number")


def test_missing_kernel_file(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """A kernel path that does not exist is named with the OS reason."""
    missing = tmp_path / "no-such-vmlinux"
    assert_one_line_error(run_cli("-kernel", str(missing)),
                          f"-kernel {missing}: No such file or directory")


def test_kernel_is_not_a_kernel(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """A file that is neither a bzImage nor an ELF vmlinux is refused by name."""
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a kernel\n" * 300)
    assert_one_line_error(run_cli("-kernel", str(text)),
                          f"-kernel {text}: not a bzImage or an ELF vmlinux")


def test_kernel_is_a_directory(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """A directory given as the kernel is refused by name."""
    assert_one_line_error(run_cli("-kernel", str(tmp_path)), f"-kernel {tmp_path}:")


def test_broken_elf_kernel(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """An ELF file cut short is refused before any VM is created."""
    cut = tmp_path / "cut.elf"
    cut.write_bytes(pvh_elf()[:100])
    assert_one_line_error(run_cli("-kernel", str(cut)), f"-kernel {cut}:")


def test_missing_initrd(run_cli: Callable[..., CliResult], kernel: Path, tmp_path: Path) -> None:
    """A missing initrd is named before any VM is created."""
    missing = tmp_path / "no-initrd"
    assert_one_line_error(run_cli("-kernel", str(kernel), "-initrd", str(missing)),
                          f"-initrd {missing}: No such file or directory")


def test_no_kernel_at_all(run_cli: Callable[..., CliResult]) -> None:
    """Without -kernel (and no file setting one) the user is told how to give one."""
    assert_one_line_error(run_cli("-smp", "2"), "no kernel", "-kernel PATH")


def test_malformed_json(run_cli: Callable[..., CliResult], kernel: Path,
                        write_json: Callable[[str], Path]) -> None:
    """A config file that is not JSON names -config, the file and the position."""
    path = write_json('{"machine-config": {"vcpu_count": 2,}}')
    assert_one_line_error(run_cli("-kernel", str(kernel), "-config", str(path)),
                          f"-config {path}: malformed JSON at line 1")


def test_missing_config_file(run_cli: Callable[..., CliResult], kernel: Path,
                             tmp_path: Path) -> None:
    """A config file that does not exist names -config and the OS reason."""
    missing = tmp_path / "none.json"
    assert_one_line_error(run_cli("-kernel", str(kernel), "-config", str(missing)),
                          f"-config {missing}: No such file or directory")


@pytest.mark.parametrize(("text", "needles"), [
    ('{"machine-config": {"vcpu_count": "two"}}',
     ["machine-config.vcpu_count", 'expected an integer, got "two"']),
    ('{"machine-config": {"vcpu_count": true}}',
     ["machine-config.vcpu_count", "expected an integer, got true"]),
    ('{"machine-config": {"vcpu_count": 2.0}}',
     ["machine-config.vcpu_count", "expected an integer, got 2.0"]),
    ('{"machine-config": {"mem_size": 268435456.0}}',
     ["machine-config.mem_size", "expected an integer, got 268435456.0"]),
    ('{"widget": [{"widget_id": "w", "size": 3.0}]}', ["widget[0].size", "expected an integer"]),
    ('{"machine-config": {"mem_share": "on"}}',
     ["machine-config.mem_share", "expected a boolean"]),
    ('{"machine-config": {"mem_size": 1048576}}',
     ["machine-config.mem_size", "1M is below the minimum 256M"]),
    ('{"machine-config": {"vcpu_count": 255}}',
     ["machine-config.vcpu_count", "255 is above the maximum 254"]),
    ('{"machine-config": {"mem_path": "rel/dir"}}',
     ["machine-config.mem_path", "must be an absolute path"]),
    ('{"machine-config": {"vcpus": 2}}', ["machine-config", "unknown key 'vcpus'"]),
    ('{"machine-config": {"type": "pc"}}', ["machine-config.type", '"pc" is not one of']),
    ('{"boot-source": {"boot_args": 5}}', ["boot-source.boot_args", "expected a string"]),
    ('{"boot-source": "vmlinux"}', ["boot-source", "expected an object"]),
    ('{"no-such-key": {}}', ["unknown key 'no-such-key'"]),
    ('{"iothread": [{"id": "a"}, {"name": "b"}]}', ["iothread[1]"]),
    ('{"widget": [{"widget_id": "w", "size": "big"}]}', ["widget[0].size", "expected an integer"]),
    ('{"widget": {"widget_id": "w"}}', ["widget", "expected a list"]),
    ("[1, 2]", ["expected an object"]),
])
def test_bad_json_value(run_cli: Callable[..., CliResult], kernel: Path,
                        write_json: Callable[[str], Path], text: str,
                        needles: list[str]) -> None:
    """A wrong JSON value names the file and the key path, and says what was expected."""
    path = write_json(text)
    result = run_cli("-kernel", str(kernel), "-config", str(path))
    assert_one_line_error(result, f"config file {path}", *needles)


@pytest.mark.parametrize(("text", "key"), [
    ('{"machine-config": {"vcpu_count": 2}, "machine-config": {"mem_size": 268435456}}',
     "machine-config"),
    ('{"machine-config": {"vcpu_count": 2, "vcpu_count": 1}}', "vcpu_count"),
])
def test_json_duplicate_key(run_cli: Callable[..., CliResult], kernel: Path,
                            write_json: Callable[[str], Path], text: str, key: str) -> None:
    """A key given twice in one JSON object is refused (not silently last-one-wins)."""
    path = write_json(text)
    assert_one_line_error(run_cli("-kernel", str(kernel), "-config", str(path)),
                          f"-config {path}: duplicate key '{key}'")


def test_json_not_utf8(run_cli: Callable[..., CliResult], kernel: Path, tmp_path: Path) -> None:
    """A config file that is not UTF-8 text is refused by name."""
    path = tmp_path / "bin.json"
    path.write_bytes(b'{"x": "\xff\xfe"}')
    assert_one_line_error(run_cli("-kernel", str(kernel), "-config", str(path)),
                          f"-config {path}")


def test_json_too_large(run_cli: Callable[..., CliResult], kernel: Path, tmp_path: Path) -> None:
    """A config file over 1 MiB is refused without being parsed."""
    path = tmp_path / "big.json"
    path.write_text('{"name": "' + "x" * (1 << 20) + '"}')
    assert_one_line_error(run_cli("-kernel", str(kernel), "-config", str(path)),
                          f"-config {path}: larger than")


def test_duplicate_ids_in_file(run_cli: Callable[..., CliResult], kernel: Path,
                               write_json: Callable[[str], Path]) -> None:
    """Two items with one id in the file are refused, naming the id and the file."""
    path = write_json('{"widget": [{"widget_id": "w1"}, {"widget_id": "w1"}]}')
    assert_one_line_error(run_cli("-kernel", str(kernel), "-config", str(path)),
                          f"config file {path}", "duplicate id 'w1'")


def test_duplicate_ids_across_kinds(run_cli: Callable[..., CliResult], kernel: Path) -> None:
    """A device id may not repeat across device kinds."""
    result = run_cli("-kernel", str(kernel), "-widget", "id=x1", "-gizmo", "id=x1")
    assert_one_line_error(result, "duplicate id 'x1'")


def test_bad_log_level(run_cli: Callable[..., CliResult], kernel: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown STRATOVMM_LOG_LEVEL is named with the accepted levels."""
    monkeypatch.setenv("STRATOVMM_LOG_LEVEL", "loud")
    assert_one_line_error(run_cli("-kernel", str(kernel)), "STRATOVMM_LOG_LEVEL", "'loud'")


@pytest.mark.parametrize(("args", "needles"), [
    (["-m", "100M"], ["-m:", "below the minimum 256M"]),
    (["-smp", "255"], ["-smp:", "above the maximum 254"]),
    (["-nosuchoption", "1"], ["unknown option '-nosuchoption'"]),
    (["-machine", "microvm,foo=bar"], ["-machine:", "unknown key 'foo'"]),
])
def test_bad_input_through_the_console_script(kernel: Path, args: list[str],
                                              needles: list[str]) -> None:
    """The real process (installed plugins, real argv) prints one line and exits 2."""
    proc = subprocess.run([sys.executable, "-m", "stratovmm.cli", "-kernel", str(kernel), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_one_line_error(CliResult(proc.returncode, proc.stdout, proc.stderr), *needles)


def test_malformed_json_through_the_console_script(kernel: Path,
                                                   write_json: Callable[[str], Path]) -> None:
    """A malformed config file in a real process: one line, exit 2."""
    path = write_json("{not json")
    proc = subprocess.run([sys.executable, "-m", "stratovmm.cli", "-kernel", str(kernel),
                           "-config", str(path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_one_line_error(CliResult(proc.returncode, proc.stdout, proc.stderr),
                          f"-config {path}: malformed JSON")

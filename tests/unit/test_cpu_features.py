"""``-cpu host[,NAME=on|off]`` (StratoVirt 2.x's option, QEMU's KVM feature names): the option
and its JSON form, and the CPUID edit it makes — KVM's leaf 0x40000001 in, the guest's out."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import CliResult

from stratovmm.boot.cpu import KVM_CPUID_FEATURES, KVM_FEATURES, kvm_features
from stratovmm.config.load import load_config
from stratovmm.config.model import VmConfig
from stratovmm.kvm.fds import CpuidEntry
from stratovmm.registry import DeviceRegistry

# What KVM_GET_SUPPORTED_CPUID reported for leaf 0x40000001 on the kvm-pvm development host:
# bits 0,1,3-7,9-14 and 24 (no MMU_OP, no MSI_EXT_DEST_ID).
HOST_EAX = 0x01007EFB
PV_IPI = 1 << 11                        # KVM_FEATURE_PV_SEND_IPI
KVM_PARA_H = Path("/usr/include/x86_64-linux-gnu/asm/kvm_para.h")


def supported(eax: int = HOST_EAX) -> list[CpuidEntry]:
    """A supported-CPUID list: leaf 1, the KVM signature leaf and the KVM features leaf."""
    return [CpuidEntry(0x1, 0, 0, 0x806F8, 0x800, 0xFEDA3203, 0x178BFBFF),
            CpuidEntry(0x40000000, 0, 0, KVM_CPUID_FEATURES, 0x4B4D564B, 0x564B4D56, 0x4D),
            CpuidEntry(KVM_CPUID_FEATURES, 0, 0, eax, 0, 0, 0)]


def leaf(entries: list[CpuidEntry], function: int) -> CpuidEntry:
    (entry,) = [e for e in entries if e.function == function]
    return entry


def load(devices: DeviceRegistry, *argv: str) -> VmConfig:
    return load_config(["-kernel", "k", *argv], devices)


# -- the CPUID edit ------------------------------------------------------------------------------


def test_pv_ipi_off_clears_exactly_bit_11() -> None:
    """kvm-pv-ipi=off: EAX of 0x40000001 loses bit 11 and nothing else; other leaves unchanged."""
    before = supported()
    after = kvm_features(before, {"kvm-pv-ipi": False})
    assert leaf(after, KVM_CPUID_FEATURES).eax == HOST_EAX & ~PV_IPI == 0x010076FB
    assert [e for e in after if e.function != KVM_CPUID_FEATURES] == before[:2]


def test_no_features_given_leaves_kvm_offer_unchanged() -> None:
    """Defaults unchanged: with no -cpu the guest gets exactly what KVM offers."""
    assert kvm_features(supported(), {}) == supported()


def test_every_name_clears_its_bits() -> None:
    """Each name with =off clears its KVM_FEATURE_* bits (kvmclock both clock bits, 0 and 3)."""
    for name, mask in KVM_FEATURES.items():
        eax = leaf(kvm_features(supported(0x01FFFFFF), {name: False}), KVM_CPUID_FEATURES).eax
        assert eax == 0x01FFFFFF & ~mask, name
    assert KVM_FEATURES["kvmclock"] == 0b1001


def test_several_off_and_on_together() -> None:
    """off clears; on keeps what KVM offers (it never adds a bit)."""
    after = kvm_features(supported(), {"kvm-pv-ipi": False, "kvm-pv-eoi": False,
                                       "kvm-steal-time": True, "kvm-msi-ext-dest-id": True})
    assert leaf(after, KVM_CPUID_FEATURES).eax == HOST_EAX & ~(PV_IPI | 1 << 6)


def test_on_for_a_feature_kvm_lacks_warns_and_stays_off(caplog: pytest.LogCaptureFixture) -> None:
    """kvm-msi-ext-dest-id=on where KVM does not offer bit 15: a warning naming it, bit unset."""
    with caplog.at_level(logging.WARNING):
        after = kvm_features(supported(), {"kvm-msi-ext-dest-id": True})
    assert not leaf(after, KVM_CPUID_FEATURES).eax & (1 << 15)
    assert "-cpu kvm-msi-ext-dest-id=on: KVM does not offer it" in caplog.text


@pytest.mark.skipif(not KVM_PARA_H.exists(), reason="no <asm/kvm_para.h> here")
def test_bits_match_the_kernel_header() -> None:
    """Every bit in the table is a KVM_FEATURE_* of <asm/kvm_para.h> under QEMU's name."""
    defined = {name: int(bit) for name, bit in re.findall(
        r"#define\s+KVM_FEATURE_(\w+)\s+(\d+)", KVM_PARA_H.read_text())}
    expected = {"kvmclock": ("CLOCKSOURCE", "CLOCKSOURCE2"), "kvm-nopiodelay": ("NOP_IO_DELAY",),
                "kvm-mmu": ("MMU_OP",), "kvm-asyncpf": ("ASYNC_PF",),
                "kvm-steal-time": ("STEAL_TIME",), "kvm-pv-eoi": ("PV_EOI",),
                "kvm-pv-unhalt": ("PV_UNHALT",), "kvm-pv-tlb-flush": ("PV_TLB_FLUSH",),
                "kvm-asyncpf-vmexit": ("ASYNC_PF_VMEXIT",), "kvm-pv-ipi": ("PV_SEND_IPI",),
                "kvm-poll-control": ("POLL_CONTROL",), "kvm-pv-sched-yield": ("PV_SCHED_YIELD",),
                "kvm-asyncpf-int": ("ASYNC_PF_INT",),
                "kvm-msi-ext-dest-id": ("MSI_EXT_DEST_ID",),
                "kvmclock-stable-bit": ("CLOCKSOURCE_STABLE_BIT",)}
    assert set(expected) == set(KVM_FEATURES)
    for name, macros in expected.items():
        assert KVM_FEATURES[name] == sum(1 << defined[m] for m in macros), name


# -- the option and its JSON form ----------------------------------------------------------------


def test_cpu_option_fills_machine_config_cpu(devices: DeviceRegistry) -> None:
    """-cpu host,kvm-pv-ipi=off → "machine-config": {"cpu": {"model": "host", ...}}."""
    config = load(devices, "-cpu", "host,kvm-pv-ipi=off,kvm-pv-eoi=on", "-smp", "4")
    assert config.document["machine-config"]["cpu"] == {"model": "host", "kvm-pv-ipi": False,
                                                        "kvm-pv-eoi": True}
    assert config.machine.cpu_features == {"kvm-pv-ipi": False, "kvm-pv-eoi": True}
    assert config.machine.vcpus == 4


def test_model_may_be_omitted_or_named(devices: DeviceRegistry) -> None:
    """-cpu kvm-pv-ipi=off (as StratoVirt 2.x takes pmu=off alone) and -cpu model=host work."""
    assert load(devices, "-cpu", "kvm-pv-ipi=false").machine.cpu_features == {
        "kvm-pv-ipi": False}
    assert load(devices, "-cpu", "model=host").machine.cpu_features == {}


def test_defaults_have_no_feature_edits(devices: DeviceRegistry) -> None:
    """Without -cpu nothing is edited; -cpu host alone edits nothing either."""
    assert load(devices).machine.cpu_features == {}
    assert load(devices, "-cpu", "host").machine.cpu_features == {}


def test_json_form(devices: DeviceRegistry, tmp_path: Path) -> None:
    """The file's machine-config.cpu object gives the same features as the option."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "k"},
                                "machine-config": {"vcpu_count": 4, "cpu": {
                                    "model": "host", "kvm-pv-ipi": False}}}))
    config = load_config(["-config", str(path)], devices)
    assert config.machine.cpu_features == {"kvm-pv-ipi": False}


def test_command_line_merges_over_the_file_key_by_key(devices: DeviceRegistry,
                                                      tmp_path: Path) -> None:
    """-cpu over the file's cpu object: its keys win, the file's other keys stay."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "k"},
                                "machine-config": {"mem_size": 512 << 20, "cpu": {
                                    "kvm-pv-ipi": False, "kvm-pv-eoi": False}}}))
    config = load_config(["-config", str(path), "-cpu", "host,kvm-pv-eoi=on"], devices)
    assert config.machine.cpu_features == {"kvm-pv-ipi": False, "kvm-pv-eoi": True}
    assert config.machine.mem_size == 512 << 20


@pytest.mark.parametrize(("argv", "message"), [
    (["-cpu", "host,kvm-pv-ipi=maybe"], "-cpu: kvm-pv-ipi='maybe' is not on/off/true/false"),
    (["-cpu", "max"], "-cpu: model='max': must be one of host"),
    (["-cpu", "host,kvm-pv-foo=off"], "-cpu: unknown key 'kvm-pv-foo' (known: model, kvmclock,"),
    (["-cpu", "host,kvm-pv-ipi=off,kvm-pv-ipi=on"], "-cpu: kvm-pv-ipi given twice"),
    (["-cpu"], "-cpu: needs a value"),
])
def test_bad_values_exit_2_naming_the_option(run_cli: Callable[..., CliResult],
                                             argv: list[str], message: str) -> None:
    """Bad -cpu input: one line naming -cpu and the key, exit status 2."""
    result = run_cli("-kernel", "k", *argv)
    assert result.rc == 2
    assert f"stratovmm: {message}" in result.err


@pytest.mark.parametrize(("cpu", "message"), [
    ({"kvm-pv-ipi": "off"}, "machine-config.cpu.kvm-pv-ipi: expected a boolean"),
    ({"model": "max"}, 'machine-config.cpu.model: "max" is not one of "host"'),
    ({"kvm-pv-foo": False}, "machine-config.cpu: unknown key 'kvm-pv-foo'"),
])
def test_bad_json_exits_2_naming_the_key(run_cli: Callable[..., CliResult],
                                         write_json: Callable[[str], Path],
                                         cpu: dict[str, object], message: str) -> None:
    """Bad machine-config.cpu in the file: the file and the key are named, exit status 2."""
    path = write_json(json.dumps({"boot-source": {"kernel_image_path": "k"},
                                  "machine-config": {"cpu": cpu}}))
    result = run_cli("-config", str(path))
    assert result.rc == 2
    assert message in result.err


def test_help_shows_cpu(run_cli: Callable[..., CliResult]) -> None:
    """--help lists -cpu with its syntax and says where the names come from."""
    out = run_cli("--help").out
    assert "\n  -cpu [model=]host[,kvm-pv-ipi=on|off,...]" in out
    assert "KVM paravirtual features on|off by QEMU's names" in out

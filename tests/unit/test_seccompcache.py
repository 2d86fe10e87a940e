"""The kept seccomp programs (``stratovmm.host.seccompcache``): a program compiled with
the process-id stand-in and patched is byte for byte what libseccomp compiles for the
real id; a kept program is used only for exactly its description and only from a whole,
private file.  (That a kept program filters as a fresh one does, in a child process:
tests/unit/test_sandbox.py.)"""

from __future__ import annotations

import ast
import marshal
import os
import struct
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stratovmm.host import sandbox, seccompcache
from stratovmm.registry import ArgCondition, SeccompRules

pytest.importorskip("pyseccomp")


def rules_for(pid: int) -> SeccompRules:
    """The core's rules plus a plugin's conditioned and plain ones, as in process ``pid``."""
    with mock.patch.object(sandbox.os, "getpid", return_value=pid):
        rules = sandbox.core_rules()
    plugin = rules.view("blk")
    plugin.allow("pread64", "pwrite64", "fsync")
    plugin.allow("openat", when=[ArgCondition(2, "masked_eq", os.O_RDWR, 0o3 | os.O_CREAT)])
    plugin.allow_ioctl(0x1260)
    return rules


def fresh(rules: SeccompRules) -> bytes:
    return sandbox.export_program(sandbox.build_filter(rules, True))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 2**22))
def test_patched_template_is_what_libseccomp_compiles_for_the_pid(pid: int) -> None:
    rules = rules_for(pid)
    template = sandbox.pid_template(rules, pid)
    assume(template is not None)        # (a pid another rule tests: below)
    assert template is not None
    program = fresh(template)
    assert seccompcache.with_pid(program, pid) == fresh(rules)


@pytest.mark.parametrize("pid", [15, 0x1260])
def test_no_template_for_a_pid_another_rule_tests(pid: int) -> None:
    """A pid equal to a constant of another rule (15: prctl's PR_SET_NAME, which the
    core's rules test; 0x1260: the plugin's ioctl) shares its comparison in what
    libseccomp compiles, so no template is made and the start compiles its filter
    afresh."""
    assert sandbox.pid_template(rules_for(pid), pid) is None


def test_template_touches_only_the_tgkill_rule() -> None:
    rules = rules_for(4242)
    template = sandbox.pid_template(rules, 4242)
    assert template is not None
    assert template.conditions("tgkill") == [(ArgCondition(0, "eq", seccompcache.PID_MARKER),)]
    for name in rules.syscalls:
        if name != "tgkill":
            assert template.conditions(name) == rules.conditions(name), name
    assert rules.conditions("tgkill") == [(ArgCondition(0, "eq", 4242),)], "the copy only"


def test_no_template_when_the_marker_is_another_rules_constant() -> None:
    rules = rules_for(4242)
    rules.view("odd").allow("kill", when=[ArgCondition(1, "eq", seccompcache.PID_MARKER)])
    assert sandbox.pid_template(rules, 4242) is None


def insn(code: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, 0, 0, k)


def test_with_pid_patches_comparisons_only() -> None:
    marker = seccompcache.PID_MARKER
    program = insn(0x20, 16) + insn(0x15, marker) + insn(0x06, 0x7FFF0000)
    assert seccompcache.with_pid(program, 77) == insn(0x20, 16) + insn(0x15, 77) + insn(
        0x06, 0x7FFF0000)
    assert seccompcache.with_pid(insn(0x20, 16), 77) is None, "no marker: not a template"
    assert seccompcache.with_pid(insn(0x20, marker) + insn(0x15, marker), 77) is None


def test_description_names_everything_the_program_depends_on() -> None:
    base = seccompcache.describe(rules_for(1), True, sandbox.__file__)
    assert base == seccompcache.describe(rules_for(1), True, sandbox.__file__)
    changed = [rules_for(2), rules_for(1), rules_for(1), rules_for(1)]
    changed[1].view("x").allow("socket")
    changed[2].view("x").allow_ioctl(0x5401 + 1)
    changed[3].view("x").allow("socket", when=[ArgCondition(0, "eq", 1)])
    for rules in changed:
        assert seccompcache.describe(rules, True, sandbox.__file__) != base
    assert seccompcache.describe(rules_for(1), False, sandbox.__file__) != base
    assert ast.literal_eval(base)["compiler"][1:] == [os.stat(sandbox.__file__).st_size,
                                                      os.stat(sandbox.__file__).st_mtime_ns]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STRATOVMM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


NAMES = 64
KEPT = seccompcache.Compiled(insn(0x15, 1) * 3, bytes(range(NAMES)))


def test_kept_for_exactly_its_description(cache: Path) -> None:
    seccompcache.store("one", KEPT)
    (path,) = cache.iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    assert seccompcache.load("one", NAMES) == KEPT
    assert seccompcache.load("two", NAMES) is None
    assert seccompcache.load("one", NAMES + 1) is None


@pytest.mark.parametrize("damage", ["truncated", "cut short", "not a program", "garbage",
                                    "group writable", "other"])
def test_a_file_that_is_not_whole_or_not_private_is_not_used(cache: Path, damage: str) -> None:
    seccompcache.store("one", KEPT)
    (path,) = cache.iterdir()
    data = marshal.loads(path.read_bytes())
    if damage == "truncated":
        data["program"] = data["program"][:-3]
        path.write_bytes(marshal.dumps(data))
    elif damage == "cut short":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "not a program":
        data["program"] = "text"
        path.write_bytes(marshal.dumps(data))
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 40)
    elif damage == "group writable":
        path.chmod(0o620)
    else:
        data["description"] = "two"
        path.write_bytes(marshal.dumps(data))
    assert seccompcache.load("one", NAMES) is None

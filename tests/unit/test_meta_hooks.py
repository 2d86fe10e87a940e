"""The hook surface stays honest: every hook in ``core/stratovmm/hookspecs.py`` is documented in the
one layout (as ``_pytest/hookspec.py``: summary, params, firstresult note, when
called), listed in the lifecycle the module docstring draws, in that
order, and called by a test that runs the real ``stratovmm``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from stratovmm import hookspecs

REPO = Path(__file__).resolve().parents[2]
LIFECYCLE_TEST = REPO / "tests" / "kvm" / "test_hook_lifecycle.py"


def hook_names() -> list[str]:
    """Every hookspec, in source order."""
    functions = [f for name, f in vars(hookspecs).items()
                 if name.startswith("vmm_") and inspect.isfunction(f)]
    functions.sort(key=lambda f: f.__code__.co_firstlineno)
    return [f.__name__ for f in functions]


HOOKS = hook_names()


def test_every_hook_is_a_hookspec_named_vmm() -> None:
    """Each vmm_* function carries the hookspec marker and nothing else in the module does."""
    assert HOOKS, "no hooks found"
    for name in HOOKS:
        assert hasattr(getattr(hookspecs, name), "stratovmm_spec"), name
    marked = [n for n, f in vars(hookspecs).items() if hasattr(f, "stratovmm_spec")]
    assert sorted(marked) == sorted(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_has_the_standard_layout(name: str) -> None:
    """Summary line; blank line; one ``:param`` per argument, in signature order; a paragraph
    saying when it is called; "Stops at first non-None result" iff it is firstresult."""
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function)
    assert doc, f"{name} has no docstring"
    summary, _, rest = doc.partition("\n")
    assert summary.endswith(".") and len(summary) <= 96, f"{name}: summary {summary!r}"
    assert rest.startswith("\n:param "), f"{name}: parameters must follow the summary"
    params = re.findall(r"^:param (\w+):", doc, re.M)
    assert params == list(inspect.signature(function).parameters), f"{name}: {params}"
    after_params = doc.split("\n\n")[2:]
    assert any(p.startswith("Called ") for p in after_params), f"{name}: no 'Called ...'"
    firstresult = function.stratovmm_spec.get("firstresult", False)
    assert ("Stops at first non-None result" in doc) == bool(firstresult), name


def test_hooks_are_defined_in_the_documented_lifecycle_order() -> None:
    """The module docstring's lifecycle diagram names every hook, in definition order."""
    doc = hookspecs.__doc__ or ""
    drawn = list(dict.fromkeys(re.findall(r"\bvmm_\w+", doc.split("Lifecycle::", 1)[1])))
    assert drawn == HOOKS


def test_every_hook_is_exercised_through_the_real_vmm() -> None:
    """The lifecycle test (a probe plugin in a real VM) expects a call of every hook; a new
    hook without a place there fails here."""
    text = LIFECYCLE_TEST.read_text()
    expected = re.search(r"^EXPECTED = \[(.*?)^\]", text, re.M | re.S)
    assert expected is not None, "test_hook_lifecycle.py lost its EXPECTED list"
    called = re.findall(r'\("(vmm_\w+)"', expected.group(1))
    assert called == HOOKS

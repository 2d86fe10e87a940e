"""``stratovmm-plugin new``: names, refusals, the template tree, and what it fills in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stratovmm import plugintemplate
from stratovmm.plugintemplate import Names, generate, main, template_files

PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_]")   # string.Template's $name / ${name}


def test_names_are_derived_from_the_plugin_name() -> None:
    """One name gives the option, package, distribution, JSON key, id field and class."""
    names = Names.of("my-dev2")
    assert (names.package, names.dist, names.json_key, names.id_field, names.cls) == (
        "stratovmm_my_dev2", "stratovmm-my-dev2", "my_dev2", "my_dev2_id", "MyDev2Device")


@pytest.mark.parametrize("name", ["My", "2dev", "dev-", "a--b", "d_e", "x", "kernel", "m0 "])
def test_unusable_names_are_refused(name: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Bad spellings and core option names exit 2 with one line saying why; nothing written."""
    assert main(["new", name, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stratovmm-plugin: plugin name {name!r}: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_not_overwritten(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A second run into the same place refuses instead of clobbering the author's work."""
    assert main(["new", "dev", "--dir", str(tmp_path)]) == 0
    (tmp_path / "dev" / "stratovmm_dev" / "device.py").write_text("# mine\n")
    assert main(["new", "dev", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "dev" / "stratovmm_dev" / "device.py").read_text() == "# mine\n"


def test_every_placeholder_is_filled(tmp_path: Path) -> None:
    """No ``$placeholder`` survives in any generated file or path, and every template file is
    written."""
    root = generate("dev", tmp_path)
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert len(written) == len(template_files()) >= 10
    for path in root.rglob("*"):
        assert "$" not in str(path.relative_to(root)), path
        if path.is_file():
            assert not PLACEHOLDER.search(path.read_text()), path


def test_template_tree_holds_only_template_files() -> None:
    """Every file of the shipped tree ends in ``.tmpl``, so ruff, mypy, pytest and setuptools
    never take a template for code of the core (a stray ``.py`` there would be linted,
    collected and installed as a module)."""
    tree = Path(plugintemplate.__file__).parent / plugintemplate.TREE
    files = [p for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files and all(p.name.endswith(".tmpl") for p in files), files


def test_unknown_placeholder_is_an_error() -> None:
    """A misspelt placeholder in a template fails loudly instead of reaching a user's file."""
    with pytest.raises(KeyError, match="pakage"):
        Names.of("dev").fill("import ${pakage}")


def test_generated_package_declares_the_api_version(tmp_path: Path) -> None:
    """The plugin module declares the plugin API version of the core that generated it."""
    from stratovmm.plugin import API_VERSION

    root = generate("dev", tmp_path)
    assert f'STRATOVMM_API = "{API_VERSION}"' in (root / "stratovmm_dev" / "plugin.py").read_text()

"""``stratovmm-plugin new NAME [--dir DIR]``: start a device plugin whose tests pass from
the first run.

The plugin is the template tree beside this module, ``${name}/``, rendered into
``DIR/NAME/``: every file ``X.tmpl`` becomes ``X``, and ``${placeholder}`` in file
names and contents becomes a spelling of NAME (see ``Names``), with
``string.Template`` rules (``$$`` is a literal ``$``).  The ``.tmpl`` suffix keeps
ruff, mypy, pytest and setuptools from taking the template files for code of the core.

The tree is the file set every StratoVMM plugin has: ``pyproject.toml``
(distribution ``stratovmm-NAME``, entry point ``NAME`` in ``stratovmm.devices``),
``stratovmm_NAME/{__init__,plugin,schema,device}.py``, ``py.typed``, ``README.md``
and ``tests/``.  The device is a working virtio skeleton to grow from: ``-NAME
id=ID[,iothread=ID]`` (JSON ``"NAME": [{"NAME_id", "iothread"}]``), one queue whose
requests are echoed back, counters for ``query-stats``, and a QMP command
``query-NAME``.  Its tests drive the device through ``DeviceHarness``, the option
through the core's configuration pipeline, and a tiny guest VM through the
``stratovmm_vm`` fixture.

A separate console script rather than ``stratovmm plugin new``: the ``stratovmm``
command line is StratoVirt's (single-dash options, every word an option or its
value), so a sub-command there would be the only one of its kind.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from stratovmm.config.core_options import CORE_OPTIONS
from stratovmm.plugin import API_VERSION

_NAME = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
TREE = "${name}"          # the template tree's root: it becomes DIR/NAME
SUFFIX = ".tmpl"


@dataclass(frozen=True)
class Names:
    """Every spelling of the plugin's name the files need (the template's placeholders)."""

    name: str            # entry point, option, device type:   my-dev
    package: str         # import name:                         stratovmm_my_dev
    dist: str            # distribution:                        stratovmm-my-dev
    json_key: str        # JSON key:                            my_dev
    id_field: str        # the id of one item:                  my_dev_id
    cls: str             # device class:                        MyDevDevice

    @classmethod
    def of(cls, name: str) -> Names:
        """The spellings of ``name``; ``ValueError`` saying why a name is unusable."""
        if not _NAME.fullmatch(name) or "--" in name:
            raise ValueError(f"plugin name {name!r}: use lower-case letters, digits and single"
                             " dashes, starting with a letter (e.g. my-dev)")
        if name in {o.name for o in CORE_OPTIONS}:
            raise ValueError(f"plugin name {name!r}: -{name} is a core option")
        key = name.replace("-", "_")
        camel = "".join(part.capitalize() for part in name.split("-"))
        return cls(name, f"stratovmm_{key}", f"stratovmm-{name}", key, f"{key}_id",
                   f"{camel}Device")

    def fill(self, text: str) -> str:
        """``text`` with every placeholder replaced (``${api}`` is the plugin API version);
        ``KeyError`` for a placeholder the template should not have."""
        return Template(text).substitute(asdict(self), api=API_VERSION)


def _walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    """``(relative path, file)`` for every file under ``folder``, depth first."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        relative = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, relative + "/")
        elif entry.name.endswith(SUFFIX):
            yield relative.removesuffix(SUFFIX), entry


def template_files() -> dict[str, Traversable]:
    """The template: output path (with placeholders, relative to NAME/) → template file.
    Read through importlib.resources, so it works from a wheel as from the checkout."""
    return dict(_walk(resources.files(__name__).joinpath(TREE), ""))


def generate(name: str, directory: Path) -> Path:
    """Write plugin ``name`` into ``directory/name``; returns that path.  ``ValueError`` for
    an unusable name, ``FileExistsError`` when the directory exists."""
    names = Names.of(name)
    root = directory / name
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    for relative, template in template_files().items():
        path = root / names.fill(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(names.fill(template.read_text()))
    return root


def main(argv: list[str] | None = None) -> int:
    """``stratovmm-plugin new NAME [--dir DIR]``."""
    parser = argparse.ArgumentParser(prog="stratovmm-plugin",
                                     description="Tools for StratoVMM plugin authors.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="start a device plugin from the template")
    new.add_argument("name", help="plugin name: option -NAME, distribution stratovmm-NAME")
    new.add_argument("--dir", type=Path, default=Path("."),
                     help="where to create NAME/ (default: the current directory)")
    args = parser.parse_args(argv)
    try:
        root = generate(args.name, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"stratovmm-plugin: {exc}", file=sys.stderr)
        return 2
    print(f"created {root}\nnext: pip install -e {root}[test] && pytest {root}")
    return 0

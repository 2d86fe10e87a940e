"""Regenerate the reference parts of docs/plugins.md from the code's docstrings.

docs/plugins.md is written by hand except between marker lines::

    <!-- BEGIN GENERATED: hooks -->
    ...
    <!-- END GENERATED: hooks -->

Each marked block is rebuilt from the docstrings and signatures of the objects
listed in ``BLOCKS``, so the reference cannot drift from the code.  Run
``python tools/gen_plugin_docs.py`` after changing a hook or a plugin-facing
API; ``--check`` exits 1 when the file is out of date (tests/unit/test_meta_docs.py
does the same check).
"""

from __future__ import annotations

import argparse
import ast
import enum
import importlib
import inspect
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from stratovmm.records import is_record

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"

# block name -> (module, [names, or (class name, [member names] | None for every public member)])
Spec = list[tuple[str, list[str | tuple[str, list[str] | None]]]]

REGISTRY: Spec = [
    ("stratovmm.api", [
        "ValueKind", "SubOption", "OptionSpec", "DeviceType", "HotplugDriver", "QmpCommand",
        ("DeviceRegistry", ["add_device_type", "add_option", "add_hotplug_driver", "view"]),
        ("QmpRegistry", ["add_command", "add_event", "view"]),
        ("SeccompRules", ["allow", "allow_ioctl", "view"]), "ArgCondition", "RuntimeOptions",
    ]),
]

VMAPI: Spec = [("stratovmm.api", [("VmApi", None), "BackendTable"])]

DEVICES: Spec = [
    ("stratovmm.api", [
        ("Device", None), "VirtioSlot", "PioWindow", "MmioWindow",
        ("VirtioDevice", [
            "device_features", "has_feature", "config_space", "read_config", "write_config",
            "on_activate", "on_reset", "close", "handle_queue", "serve", "serve_later",
            "held_chains", "signal_used", "guest_fault", "host_error", "stats"]),
        ("Frames", None), ("HeldChains", ["after", "write_views"]),
        ("DescriptorChain", None), "Descriptor", "skip_views", "trim_views", "scatter", "gather",
        ("BusDevice", ["read", "write"]),
        ("RegisterDevice", ["read_register", "write_register", "after_unlock", "close",
                            "guest_fault", "host_error", "stats"]),
        ("GuestMemoryProtocol", None),
        ("EventLoop", ["register", "modify", "unregister", "call_soon", "call_later",
                       "in_loop_thread", "pending_timers", "pending_calls", "watching",
                       "ready"]),
        ("IrqLine", None),
        ("TokenBucket", None),
        ("UnixListener", None), "check_socket_path",
        ("VhostBackend", ["open", "request", "set_features", "set_mem_table", "set_vring",
                          "vring_base", "close"]),
        ("VhostRings", ["offered", "start", "kick", "stop", "close"]),
        "vhost_iow",
    ]),
]

ERRORS: Spec = [
    ("stratovmm.errors", []),
    ("stratovmm.api", ["QmpError", "GenericError", "DeviceNotFound", "DeviceNotActive"]),
]

TESTING: Spec = [
    ("stratovmm.testing.memory", ["BytearrayGuestMemory"]),
    ("stratovmm.testing.virtqueue", ["Buffer", ("MockSplitQueue", None)]),
    ("stratovmm.testing.harness", [("DeviceHarness", None)]),
    ("stratovmm.testing.spec", []),
    ("stratovmm.testing.config", ["plugin_host", "plugin_registry", "parse_config", "help_text",
                                  "run_main"]),
    ("stratovmm.testing.dispatch", ["execute_qmp"]),
    ("stratovmm.testing.fixtures", ["stratovmm_vm", "stratovmm_tiny_guest",
                                    "stratovmm_guest_dir"]),
    ("stratovmm.testing.vm", ["PluginSource", ("VmLauncher", ["start", "run", "close"]),
                              ("RunningVm", None)]),
    ("stratovmm.testing.tinyguest", []),
    ("stratovmm.testing.tinyguest", ["build_pvh_guest"]),
    ("stratovmm.testing.qmp", [("QmpTestClient", ["command", "wait_event", "send_bytes",
                                                  "read_message", "close"])]),
    ("stratovmm.testing.guest", ["boot_args", "run_guest", "cmd_arg", "GuestRun"]),
]


# -- text conversion ----------------------------------------------------------------------------


def markdown(doc: str) -> str:
    """A docstring (reST-flavoured) as Markdown: ``x`` → `x`, a ``::`` block or an indented
    block after a line ending in ``:`` fenced as code, ``:param x:`` lines as a list."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        indented_next = i + 1 < len(lines) and lines[i + 1].startswith("  ")
        if line.rstrip().endswith("::") or (line.rstrip().endswith(":") and indented_next
                                            and not line.startswith(":param")):
            head = line.rstrip().removesuffix("::").rstrip()
            out += [_inline(head if head.endswith(":") else head + ":"), ""] if head else []
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("  ")):
                block.append(lines[i])
                i += 1
            out += ["```", *textwrap.dedent("\n".join(block)).strip("\n").splitlines(), "```"]
            if i < len(lines) and lines[i].strip():
                out.append("")
            continue
        param = re.match(r"^:param (\w+):\s*(.*)$", line)
        if param:
            text = [param.group(2)]
            i += 1
            while i < len(lines) and lines[i].startswith("    "):
                text.append(lines[i].strip())
                i += 1
            out.append(f"- `{param.group(1)}`: {_inline(' '.join(text))}")
            continue
        out.append(line)
        i += 1
    # inline markup may span lines; code blocks keep theirs
    pieces = re.split(r"(^```\n.*?^```$)", "\n".join(out), flags=re.M | re.S)
    return "".join(p if p.startswith("```") else _inline(p) for p in pieces).strip()


def _inline(text: str) -> str:
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


def _source_node(obj: Any) -> ast.AST:
    """The ``def`` or ``class`` node of ``obj`` as written in its module."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    node = tree.body[0]
    assert isinstance(node, (ast.FunctionDef, ast.ClassDef)), obj
    return node


def signature(function: Callable[..., Any], drop_self: bool = False) -> str:
    """``(a: int, b: str = 'x') -> None`` as written in the source (defaults and annotations
    as expressions, not as the values they happen to have in this process)."""
    node = _source_node(function)
    assert isinstance(node, ast.FunctionDef)
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)

    def one(arg: ast.arg, default: ast.expr | None, prefix: str = "") -> str:
        text = prefix + arg.arg
        if arg.annotation is not None:
            text += f": {ast.unparse(arg.annotation)}"
        if default is not None:
            text += f" = {ast.unparse(default)}" if arg.annotation else f"={ast.unparse(default)}"
        return text

    parts = [one(a, d) for a, d in zip(positional, defaults, strict=True)]
    if drop_self and parts and positional[0].arg in ("self", "cls"):
        parts.pop(0)
    if args.vararg is not None:
        parts.append(one(args.vararg, None, "*"))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [one(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg is not None:
        parts.append(one(args.kwarg, None, "**"))
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"({', '.join(parts)}){returns}"


def dataclass_fields(cls: type) -> list[str]:
    """``name: type = default`` of each field, from the class body; a ``default_factory``
    shows what the factory makes."""
    node = _source_node(cls)
    assert isinstance(node, ast.ClassDef)
    out = []
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        text = f"{item.target.id}: {ast.unparse(item.annotation)}"
        value = item.value
        if isinstance(value, ast.Call) and any(
                k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in value.keywords):
            continue                  # computed by the class, not a constructor argument
        if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
            factory = next((k.value for k in value.keywords if k.arg == "default_factory"), None)
            if isinstance(factory, ast.Lambda):
                text += f" = {ast.unparse(factory.body)}"
            elif factory is not None:
                text += f" = {ast.unparse(factory)}()"
        elif value is not None:
            text += f" = {ast.unparse(value)}"
        out.append(text)
    return out


# -- rendering ----------------------------------------------------------------------------------


def _doc(obj: Any) -> str:
    return markdown(inspect.getdoc(obj) or "(undocumented)")


def render_hooks() -> str:
    """The lifecycle (module docstring) and one section per hookspec, in source order."""
    hookspecs = importlib.import_module("stratovmm.hookspecs")
    out = [markdown(hookspecs.__doc__ or "")]
    hooks = [f for name, f in vars(hookspecs).items()
             if name.startswith("vmm_") and inspect.isfunction(f)]
    hooks.sort(key=lambda f: f.__code__.co_firstlineno)
    for hook in hooks:
        opts = getattr(hook, "stratovmm_spec", {})
        flags = [k for k in ("firstresult", "historic") if opts.get(k)]
        out += ["", f"#### `{hook.__name__}{signature(hook)}`"
                + (f" ({', '.join(flags)})" if flags else ""), "", _doc(hook)]
    return "\n".join(out)


def _member(cls: type, name: str) -> str:
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        returns = signature(raw.fget).partition(" -> ")[2] if raw.fget else ""
        head = f"- `{name}` (property{': ' + returns if returns else ''})"
        target: Any = raw
    elif isinstance(raw, (classmethod, staticmethod)):
        function = raw.__func__
        head = f"- `{name}{signature(function, drop_self=isinstance(raw, classmethod))}`"
        target = function
    elif inspect.isfunction(raw):
        head = f"- `{name}{signature(raw, drop_self=True)}`"
        target = raw
    else:
        return f"- `{name} = {raw!r}`"
    doc = inspect.getdoc(target)
    if not doc:
        return head
    body = markdown(doc).replace("\n", "\n  ")
    return f"{head}: {body}"


def _public_members(cls: type) -> list[str]:
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (property, classmethod, staticmethod)) or inspect.isfunction(value):
            names.append(name)
    return names


def render_class(cls: type, members: list[str] | None) -> str:
    """A class: its signature (dataclass fields with defaults, or ``__init__``), its
    docstring, and the listed members."""
    out: list[str] = []
    if issubclass(cls, enum.Enum):
        out.append(f"#### `{cls.__name__}` (enum)")
        out += ["", _doc(cls), ""]
        out += [f"- `{cls.__name__}.{m.name}` = `{m.value!r}`" for m in cls]
        return "\n".join(out)
    if getattr(cls, "_is_protocol", False):
        out.append(f"#### `{cls.__name__}` (protocol)")
    elif is_dataclass(cls) or is_record(cls):
        out.append(f"#### `{cls.__name__}({', '.join(dataclass_fields(cls))})`")
    elif "__init__" in vars(cls):
        init = signature(vars(cls)["__init__"], drop_self=True).removesuffix(" -> None")
        out.append(f"#### `{cls.__name__}{init}`")
    else:
        out.append(f"#### `{cls.__name__}`")
    out += ["", _doc(cls)]
    names = _public_members(cls) if members is None else members
    if names:
        out += [""] + [_member(cls, name) for name in names]
    return "\n".join(out)


def render_function(function: Callable[..., Any], name: str) -> str:
    """A function or fixture."""
    wrapped = getattr(function, "_get_wrapped_function", None)
    target = wrapped() if callable(wrapped) else getattr(function, "__wrapped__", function)
    kind = " (pytest fixture)" if wrapped is not None or hasattr(function, "_pytestfixturefunction"
                                                                 ) else ""
    return f"#### `{name}{signature(target)}`{kind}\n\n{_doc(target)}"


def render(spec: Spec) -> str:
    """Each module in ``spec``: its import path, then its docstring (for a module listed
    with no names) or each listed object."""
    out: list[str] = []
    for module_name, entries in spec:
        module = importlib.import_module(module_name)
        if module_name in REEXPORTED:
            out.append(f"`{module_name}` (its classes are in `stratovmm.api`)")
        else:
            out.append(f"`import {module_name}`" if not entries else
                       f"`from {module_name} import "
                       f"{', '.join(e if isinstance(e, str) else e[0] for e in entries)}`")
        if not entries:
            out.append(_doc(module))
        for entry in entries:
            name, members = (entry, []) if isinstance(entry, str) else entry
            obj = getattr(module, name)
            out.append(render_class(obj, members) if inspect.isclass(obj)
                       else render_function(obj, name))
    return "\n\n".join(out)


REEXPORTED = ("stratovmm.errors",)       # shown for a docstring; imported from stratovmm.api


def render_api() -> str:
    """stratovmm.api: its docstring, then every name it exports."""
    api = importlib.import_module("stratovmm.api")
    names = ", ".join(f"`{name}`" for name in api.__all__)
    return f"{_doc(api)}\n\n`stratovmm.api.__all__` ({len(api.__all__)} names): {names}."


BLOCKS: dict[str, Callable[[], str]] = {
    "api": render_api,
    "hooks": render_hooks,
    "registry": lambda: render(REGISTRY),
    "vmapi": lambda: render(VMAPI),
    "devices": lambda: render(DEVICES),
    "errors": lambda: render(ERRORS),
    "testing": lambda: render(TESTING),
}


def regenerate(text: str) -> str:
    """``text`` with every generated block rebuilt; a block the file lacks is an error."""
    for name, build in BLOCKS.items():
        begin, end = f"<!-- BEGIN GENERATED: {name} -->\n", f"<!-- END GENERATED: {name} -->"
        start = text.find(begin)
        stop = text.find(end, start)
        if start < 0 or stop < 0:
            raise ValueError(f"{DOC}: no generated block {name!r}")
        text = f"{text[:start]}{begin}\n{build()}\n\n{text[stop:]}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite docs/plugins.md, or with ``--check`` say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    fresh = regenerate(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is out of date: run python tools/gen_plugin_docs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        DOC.write_text(fresh)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

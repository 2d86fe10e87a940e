"""Print the import graph of the core's parts and check that its layers point one way.

    python tools/importgraph.py            # the graph, layer by layer
    python tools/importgraph.py --modules  # also the module-level imports behind each edge
    python tools/importgraph.py --check    # exit 1 on a cycle or an edge that points up

A *part* is a folder of ``core/stratovmm`` (``machine``, ``devices``, ``host``, ``qmp``,
``virtio``, ``boot``, ``kvm``, ``config``, ``testing``, ``plugintemplate``) or a module
at its root (``errors``, ``memory``, ``registry``, ``plugin``, ``hookspecs``, ``api``,
``cli``; ``stratovmm`` is the package's ``__init__``, which holds only the version).
An edge ``a -> b`` means a module of ``a`` imports a module of ``b``; a module whose
name starts with ``_`` (the compiled cffi modules: ``kvm._kvm``, ``boot._bootparam``,
``virtio._barrier``, ``virtio._ring``, ``host._sandbox``) is private to its part.  Imports inside a
function count: they run.  Imports under ``if TYPE_CHECKING:`` do not run; they are
listed apart, as "typing only", and the checks leave them out (they let a lower part
name a higher part's type in an annotation, e.g. the ``VmApi`` that QMP handlers get).

The layers, bottom to top (a part may import parts of lower layers, and parts of its
own layer as long as no cycle forms; never a higher one):

1. ``stratovmm``, ``errors``, ``registry``, ``conforms``: the version, the exception
   tree, the plugin contract's vocabulary (option specs, device types, QMP commands,
   seccomp rules: plain data that the core and plugins fill in), and the quick
   JSON-schema walk that spares a valid run from importing jsonschema.
2. ``kvm``, ``memory``: the KVM fds and guest RAM.
3. ``host``: the process's services (event loop, unix sockets, logging, seccomp
   filter, daemonizing).
4. ``boot``, ``devices``: loading the kernel; what every device model builds on
   (counters, log-once, rate limits, the register-window base).
5. ``virtio``: split queues, the device base, the mmio transport, vhost hand-over.
6. ``hookspecs``, ``plugin``, ``entrypoints``: the hooks, the pluggy host that calls
   them, and the cache of the plugins' entry points.
7. ``config``: the command line, the JSON file and the one schema module.
8. ``qmp``: the monitor.
9. ``machine``: the VM, which puts all of the above together.
10. ``cli``, ``testing``, ``plugintemplate``, ``api``: entry points and facades.

``api`` is the plugins' one import point: it re-exports from many parts, so it sits
on top, and the rule for a facade is that nothing in the core imports it (it is
for plugins; ``FACADES``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "core" / "stratovmm"
PACKAGE = "stratovmm"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("stratovmm", "errors", "registry", "conforms", "fastpath", "cachefile", "records"),
    ("kvm", "memory"),
    ("host",),
    ("boot", "devices"),
    ("virtio",),
    ("hookspecs", "plugin", "entrypoints"),
    ("config",),
    ("qmp",),
    ("machine",),
    ("cli", "testing", "plugintemplate", "api"),
    ("__main__",),
)
FACADES = frozenset({"api"})
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


@dataclass
class Graph:
    """Part-level edges, each with the module-level imports behind it."""

    runtime: dict[tuple[str, str], set[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(set))
    typing: dict[tuple[str, str], set[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(set))
    parts: set[str] = field(default_factory=set)
    private: set[tuple[str, str]] = field(default_factory=set)   # across parts


def module_name(path: Path, root: Path = CORE) -> str:
    """``core/stratovmm/virtio/queue.py`` → ``stratovmm.virtio.queue``."""
    relative = path.relative_to(root).with_suffix("")
    names = [PACKAGE, *relative.parts]
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def part_of(module: str) -> str:
    """The part a ``stratovmm`` module belongs to (``stratovmm`` for the package itself)."""
    names = module.split(".")
    return names[1] if len(names) > 1 else PACKAGE


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST, modules: set[str], here: str) -> list[tuple[str, bool]]:
    """``(imported core module, typing only)`` for every import in ``tree``.

    ``from P import n`` names module ``P.n`` when that is a module, else ``P``.
    """
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                visit(statement, True)
            for statement in node.orelse:
                visit(statement, typing_only)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: -node.level]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in modules else base, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return [(name, typing_only) for name, typing_only in found
            if name == PACKAGE or name.startswith(PACKAGE + ".")]


def build(root: Path = CORE) -> Graph:
    """The graph of every ``.py`` file under ``root`` (the core's package)."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    graph = Graph()
    for path in paths:
        here = module_name(path, root)
        graph.parts.add(part_of(here))
        for target, typing_only in imports(ast.parse(path.read_text(), str(path)), modules,
                                           here):
            edge = (part_of(here), part_of(target))
            if edge[0] == edge[1]:
                continue
            if target.split(".")[-1].startswith("_"):
                graph.private.add((here, target))
            (graph.typing if typing_only else graph.runtime)[edge].add((here, target))
    for edge in graph.runtime:
        graph.typing.pop(edge, None)          # shown once, as the runtime edge it also is
    return graph


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one part (Tarjan)."""
    successors: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        successors[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in successors[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted({n for edge in edges for n in edge}):
        if node not in index:
            connect(node)
    return found


def violations(graph: Graph) -> list[str]:
    """Every broken rule: a runtime cycle, an edge to a higher layer, a part missing from
    ``LAYERS``, a core module importing a facade, a part importing another part's private
    module (a native ``_name`` module belongs to the part that builds it)."""
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(set(graph.runtime))]
    problems += [f"{a} imports {b}, private to {part_of(b)}"
                 for a, b in sorted(graph.private)]
    problems += [f"{part}: not in LAYERS (place it in tools/importgraph.py)"
                 for part in sorted(graph.parts - set(RANK))]
    for (a, b), why in sorted(graph.runtime.items()):
        if b in FACADES:
            problems.append(f"{a} -> {b}: {b} is a facade for plugins; the core does not"
                            f" import it ({_why(why)})")
        elif a in RANK and b in RANK and RANK[b] > RANK[a]:
            problems.append(f"{a} -> {b} points up (layer {RANK[a] + 1} imports layer"
                            f" {RANK[b] + 1}: {_why(why)})")
    return problems


def _why(imports: set[tuple[str, str]]) -> str:
    return ", ".join(f"{a} imports {b}" for a, b in sorted(imports))


def render(graph: Graph, modules: bool = False) -> str:
    """The graph as text: each layer's parts and what each imports."""
    lines = []
    for rank in reversed(range(len(LAYERS))):
        lines.append(f"layer {rank + 1}: {', '.join(LAYERS[rank])}")
        for part in LAYERS[rank]:
            if part not in graph.parts:
                lines.append(f"  {part} (not present)")
                continue
            for kind, edges in (("imports", graph.runtime), ("typing only", graph.typing)):
                targets = sorted((b for a, b in edges if a == part),
                                 key=lambda b: (-RANK.get(b, 99), b))
                if targets:
                    lines.append(f"  {part} {kind}: {', '.join(targets)}")
                if modules:
                    for target in targets:
                        for a, b in sorted(edges[(part, target)]):
                            lines.append(f"      {a} -> {b}")
    lines.extend(f"  {p} (not in LAYERS)" for p in sorted(graph.parts - set(RANK)))
    problems = violations(graph)
    lines.append("")
    lines.append("problems:" if problems else "no cycles; every runtime edge points down")
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the graph; with ``--check`` the exit status says whether a rule is broken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true",
                        help="list the module imports behind each edge")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a layer rule is broken")
    args = parser.parse_args(argv)
    graph = build()
    sys.stdout.write(render(graph, args.modules))
    return 1 if args.check and violations(graph) else 0


if __name__ == "__main__":
    sys.exit(main())

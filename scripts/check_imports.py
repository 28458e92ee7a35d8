"""Import contracts of the ``forwarder`` package, checked by ``make lint``.

Two rules keep the tree readable as a data path:

* **Layers.** A module may import only from its own stage or a stage below it
  in ``LAYERS``. The ground floor (errors, logs, metrics) is importable from
  everywhere and imports no stage.
* **No module cycles.** Not even through an import inside a function or under
  ``TYPE_CHECKING``: a cycle hidden that way is still two modules that cannot
  be understood (or moved) one without the other.

It reads the source with :mod:`ast` and imports nothing, so it runs before the
dependencies are installed and cannot be fooled by import-time side effects.
Exit status 1 with one line per violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "forwarder"
# Lowest first. A stage may import the stages before it, never one after it.
LAYERS: list[set[str]] = [
    {
        "forwarder",
        "forwarder.errors",
        "forwarder.logs",
        "forwarder.secrets",
        "forwarder.metrics",
        "forwarder.event_loop",
        "forwarder.memory",
        "forwarder.expansion",
    },
    # Chain records, signatures and the verifier: pure format and cryptography.
    {"forwarder.integrity"},
    {"forwarder.buffer"},
    {"forwarder.destinations"},
    {"forwarder.config"},
    {"forwarder.ingest"},
    {"forwarder.delivery"},
    {"forwarder.ops"},
    {"forwarder.app", "forwarder.cli", "forwarder.cli_parser", "forwarder.__main__"},
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every ``forwarder`` module that ``name`` imports, wherever the import stands."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m for m in found if m in known} | {
        m.rsplit(".", 1)[0] for m in found if m not in known and m.rsplit(".", 1)[0] in known
    }


def layer_of(module: str) -> int:
    best, index = "", -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            # The root package holds only the version: it is no prefix of the stages.
            nested = prefix != PACKAGE and module.startswith(prefix + ".")
            if (module == prefix or nested) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def check(root: Path) -> list[str]:
    files = {module_name(p, root): p for p in (root / PACKAGE).rglob("*.py")}
    graph = {name: imports_of(path, name, set(files)) - {name} for name, path in files.items()}
    problems: list[str] = []
    for name in sorted(graph):
        own = layer_of(name)
        if own < 0:
            problems.append(f"{name}: in no layer of scripts/check_imports.py")
            continue
        for target in sorted(graph[name]):
            # A package's __init__ is part of its own stage; importing it is not upward.
            if name.startswith(target + ".") and layer_of(target) == own:
                continue
            if layer_of(target) > own:
                problems.append(f"{name} imports {target}: a later stage (imports point down)")
    problems += [f"import cycle: {' <-> '.join(cycle)}" for cycle in find_cycles(graph)]
    return problems


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

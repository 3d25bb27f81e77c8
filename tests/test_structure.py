"""The package's layers: no import cycle between nasbert's subpackages and top-level modules, and onnx is imported
by one module only."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import nasbert

ROOT = Path(nasbert.__file__).parent


def _unit(module: str) -> str:
    """The layer a module belongs to: its subpackage (``nasbert.training.distill`` -> ``training``), or the
    top-level module itself (``nasbert.budgets`` -> ``budgets``); ``nasbert`` is the package's ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nasbert"


def _imports() -> dict[tuple[str, str], list[str]]:
    """``{(unit, imported unit): ["file:line", ...]}`` for every import of one nasbert unit by another, at module
    level or inside a function."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if path.name == "__init__.py" else rel.parts)
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                # "from . import x" / "from nasbert import x": each name may be a unit of its own
                targets = [f"{target}.{a.name}" for a in node.names] if target == "nasbert" else [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] != "nasbert":
                    continue
                src, dst = _unit(module), _unit(target)
                if src != dst and (dst != "nasbert" and (ROOT / dst).exists() or (ROOT / f"{dst}.py").exists()):
                    edges[(src, dst)].append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return edges


def _cycles(edges) -> list[list[str]]:
    graph = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_nasberts_packages():
    edges = _imports()
    assert ("latency", "onnxio") in edges and ("export", "latency") in edges  # the walk sees real imports
    cycles = _cycles(edges)
    detail = [f"{a} -> {b}: {edges[(a, b)][:3]}" for c in cycles for a in c for b in c if (a, b) in edges]
    assert not cycles, f"import cycles {cycles}:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"): [], ("b", "c"): []}) == []


def test_onnx_is_imported_by_one_module():
    importers = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "onnx" or n.startswith("onnx.") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"onnxio.py"}

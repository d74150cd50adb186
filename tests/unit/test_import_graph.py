"""The import graph keeps its shape (docs/architecture.md, "Dependency direction").

Built with ``ast`` from the source, module-level and function-level imports alike (a deferred
import is still a dependency): no import cycle in healmesh but the deliberate deferred one
among the model adapters, no import from a lower floor to a higher one, entry points that
import only floors 1-3 and not each other (but the gateway composing the scorers), and
``healmesh.ops`` imported by nothing below it.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# HEALMESH_IMPORT_GRAPH_ROOT points the test at another checkout (to see it fail on old code).
ROOT = Path(os.environ.get("HEALMESH_IMPORT_GRAPH_ROOT") or Path(__file__).resolve().parents[2])
PACKAGE = "healmesh"
ENTRY_POINTS = ("bentos", "gateway", "dags")

# The floor of each top-level part of healmesh, from the ground up (DESIGN.md, "Target layout
# inside healmesh/"). A module imports from its own floor or below; on floor 3 a package
# imports only itself and lower floors (the gateway, the scorers and the lifecycle talk
# through Redis, HTTP and MLflow, never through each other's code).
FLOORS: dict[str, int] = {
    # 1: definitions and pure decisions
    "healmesh": 1,  # the package's own __init__
    "settings": 1, "project": 1, "schema": 1, "errors": 1, "policies": 1, "urls": 1,
    # 2: the shared model of the world, and clients of the stores
    "control": 2, "data": 2, "models": 2, "registry": 2, "evaluation": 2, "training": 2,
    "features": 2, "rules": 2, "credentials": 2, "access": 2, "redis_conn": 2, "bento_store": 2,
    "heap": 2,
    # 3: the I/O around the policies, one package per process kind
    "serving": 3, "gateway": 3, "lifecycle": 3,
    # 4: running it all locally; nothing below imports it
    "ops": 4,
}
TOP_FLOOR = 4
# The one deliberate cycle: ``models.bundle`` loads an adapter by its kind with a deferred
# import (an XGBoost bundle must not import torch), and each adapter imports ``BundleMeta``.
ALLOWED_CYCLE = frozenset({"healmesh.models.bundle", "healmesh.models.mlp", "healmesh.models.xgb"})
# The one import between entry points: the mesh bento composes the scorers into the gateway
# (``bentoml.depends(XGBoostScorer)``), which needs their service classes.
ALLOWED_BETWEEN_ENTRY_POINTS = frozenset({("gateway", "bentos")})


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    deferred: bool  # inside a function: runs when called, not when the module loads
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line}{', deferred' if self.deferred else ''})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for top in (PACKAGE, *ENTRY_POINTS):
        for path in sorted((ROOT / top).rglob("*.py")):
            out[module_name(path)] = path
    return out


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits inside a function."""
    def walk(node: ast.AST, deferred: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, deferred
            yield from walk(child, deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
    yield from walk(tree, False)


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The deepest module of ``name`` that exists (``a.b.attr`` -> ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def edges(modules: dict[str, Path]) -> list[Edge]:
    out = []
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, deferred in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    pkg = importer.split(".")
                    pkg = pkg if is_package else pkg[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                # ``from pkg import sub`` names a module when ``pkg.sub`` is one
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                top = target.split(".")[0]
                if top == PACKAGE or top in ENTRY_POINTS:
                    edge = Edge(importer, _resolve(target, modules), deferred, node.lineno)
                    if edge not in out:  # ``from m import a, b`` is one edge
                        out.append(edge)
    return out


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return FLOORS.get(parts[1] if len(parts) > 1 else PACKAGE)


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


MODULES = source_modules()
EDGES = edges(MODULES)


def test_the_graph_sees_the_code():
    # a test that parses nothing passes everything: make sure it reads what it guards
    assert {"healmesh.settings", "healmesh.control.state", "healmesh.ops.cli", "gateway.service"} <= set(MODULES)
    assert any(e.deferred for e in EDGES) and any(not e.deferred for e in EDGES)


def test_every_healmesh_import_names_a_module_of_this_tree():
    # an import of a moved module could still load a stale copy from an installed package
    missing = [str(e) for e in EDGES if e.imported not in MODULES]
    assert not missing, "imports of modules that are not in the tree:\n" + "\n".join(missing)


def test_every_part_of_healmesh_has_a_floor():
    unplaced = sorted({part_of(m) for m in MODULES if m.startswith(PACKAGE) and floor_of(m) is None})
    assert not unplaced, f"give these a floor in FLOORS (and in docs/architecture.md): {unplaced}"


def test_no_import_cycle_but_the_model_adapters():
    graph: dict[str, set[str]] = {}
    for e in EDGES:
        if e.importer.startswith(PACKAGE) and e.imported.startswith(PACKAGE):
            graph.setdefault(e.importer, set()).add(e.imported)
    found = [c for c in cycles(graph) if c != ALLOWED_CYCLE]
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in found)
    # and the allowed one stays deferred on the bundle's side, so no adapter loads with it
    into_adapters = [e for e in EDGES if e.importer == "healmesh.models.bundle"
                     and e.imported in ALLOWED_CYCLE - {"healmesh.models.bundle"}]
    assert into_adapters and all(e.deferred for e in into_adapters), [str(e) for e in into_adapters]


def test_no_import_goes_up_a_floor():
    upward = []
    for e in EDGES:
        low, high = floor_of(e.importer), floor_of(e.imported)
        if low is None or high is None:
            continue
        if high > low:
            upward.append(f"{e} (floor {low} -> {high})")
        elif high == low == 3 and part_of(e.importer) != part_of(e.imported):
            upward.append(f"{e} (across floor 3: {part_of(e.importer)} -> {part_of(e.imported)})")
    assert not upward, "imports against the floors:\n" + "\n".join(upward)


def test_entry_points_import_only_floors_one_to_three_and_not_each_other():
    # bentos/, gateway/ and dags/ stay thin: they wire the package, and never reach for ops
    bad = []
    for e in EDGES:
        top = e.importer.split(".")[0]
        if top not in ENTRY_POINTS:
            continue
        target = e.imported.split(".")[0]
        if target in ENTRY_POINTS and target != top and (top, target) not in ALLOWED_BETWEEN_ENTRY_POINTS:
            bad.append(f"{e} (entry points never import each other)")
        elif target == PACKAGE and (floor_of(e.imported) or TOP_FLOOR) > 3:
            bad.append(f"{e} (floor {floor_of(e.imported)})")
    assert not bad, "\n".join(bad)


def test_nothing_below_ops_imports_it():
    into_ops = [str(e) for e in EDGES if part_of(e.imported) == "ops" and e.imported.startswith(PACKAGE)
                and not (e.importer.startswith(f"{PACKAGE}.ops.") or e.importer == f"{PACKAGE}.ops")]
    assert not into_ops, "imports of healmesh.ops from below it:\n" + "\n".join(into_ops)

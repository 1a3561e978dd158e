"""The house's rules, read from the source: the import graph of `service/` has no cycle, the serving path imports
nothing offline (service.training), the model package imports only torch, numpy and safetensors, and no module is
over 500 lines. Every import counts: at module level, inside functions and under TYPE_CHECKING alike."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "service"
MAX_LINES = 500
SERVING_ENTRY_POINTS = ("service.app", "service.embedder.worker")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path) -> Iterator[str]:
    """Every absolute module name an import statement in `path` names (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:  # `from service.serving import predict` imports a module
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}"


def internal_imports(name: str) -> set[str]:
    """The service modules `name` imports (a name inside a module counts as that module)."""
    out = set()
    for imported in imported_names(MODULES[name]):
        while imported and imported not in MODULES:
            imported = imported.rpartition(".")[0]
        if imported.startswith("service") and imported != name:
            out.add(imported)
    return out


GRAPH = {name: internal_imports(name) for name in MODULES}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH[m])
    return seen


# What each part of `service` may import (docs/ARCHITECTURE.md draws it): lower layers never import higher ones.
LAYERS: dict[str, set[str]] = {
    "config": set(),
    "gpo": set(),
    "batching": {"deadline"},  # a queue admits work by the time its request has left
    "deadline": set(),
    "metrics": set(),
    "progress": set(),
    "schemas": {"config"},
    "db": {"config"},
    "cache": {"config"},
    "auth": {"db"},
    "limits": {"config", "schemas"},
    "client": {"schemas"},
    "embedder": {"batching", "config", "deadline", "metrics", "progress"},
    "training": {"config", "embedder", "gpo", "progress"},
    "serving": {"auth", "batching", "cache", "config", "db", "embedder", "gpo", "limits", "metrics", "schemas"},
    "api": {"auth", "batching", "config", "db", "embedder", "limits", "schemas", "serving"},
    "app": {"api", "cache", "config", "db", "deadline", "embedder", "gpo", "limits", "metrics", "serving"},
    "cli": {"app", "auth", "config", "db", "embedder", "gpo", "training"},
    "data": set(),
}


def part(module: str) -> str:
    """service.serving.predict -> serving; service.limits -> limits."""
    return module.split(".")[1] if "." in module else module


def test_every_part_imports_only_the_layers_below_it() -> None:
    wrong = sorted(
        f"{m} imports {i}"
        for m, imported in GRAPH.items()
        if m != "service"
        for i in imported
        if part(i) != part(m) and part(i) not in LAYERS[part(m)]
    )
    assert wrong == []


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("entry", SERVING_ENTRY_POINTS)
def test_the_serving_path_imports_nothing_offline(entry: str) -> None:
    offline = sorted(m for m in reachable(entry) if m.startswith("service.training") or m == "service.cli")
    assert offline == [], f"{entry} reaches offline modules: {offline}"


def test_the_model_package_imports_only_torch_numpy_and_safetensors() -> None:
    allowed = {"torch", "numpy", "safetensors", "__future__"} | set(sys.stdlib_module_names)
    for name, path in MODULES.items():
        if not name.startswith("service.gpo"):
            continue
        for imported in imported_names(path):
            top = imported.split(".")[0]
            assert top in allowed or imported.startswith("service.gpo"), f"{name} imports {imported}"


def test_no_module_is_over_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_no_private_name_is_imported_from_another_module() -> None:
    """A helper another module needs is public, with a name that says what it does."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service"):
                found += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert found == []


def test_no_two_classes_share_a_name() -> None:
    """One name, one thing: a reader (and a grep) never has to ask which `Prediction` is meant."""
    where: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(name)
    assert {c: ms for c, ms in where.items() if len(ms) > 1} == {}


def test_the_graph_is_read_right() -> None:
    """The reader sees imports of every form (else the tests above could pass on an empty graph)."""
    assert "service.serving.services" in GRAPH["service.serving.contexts"]  # from x import name
    assert "service.serving.predict" in GRAPH["service.api.predict"]  # from package import module
    assert "service.db.repository" in GRAPH["service.serving.groups"]  # from package import module as alias
    assert "service.serving.predictor" in reachable("service.app")

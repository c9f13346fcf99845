"""The layers of shared/DESIGN.md, checked on the source: every import (module level or inside a
function) of every module is parsed, and a cycle or an arrow against the layers fails.

    api / workers -> ingest / query -> kvstore / oracles / models -> engine

`toyworld/` sits at the edge (only the composition root, the benches and the tests name it),
and settings are read only by `videokv/` (settings, runtime, services, CLI commands).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folder of the repository -> its package (pyproject's package-dir).
FOLDERS = ("engine", "models", "oracles", "toyworld", "ingest", "kvstore", "query", "workers", "api", "bench",
           "videokv")
# videokv/ modules every layer may use (no wiring, no settings).
SHARED = {"videokv", "videokv.errors", "videokv.hashing"}

# The arrows the design forbids (from the issue that set the layers).
FORBIDDEN = {
    "engine": {"models", "oracles", "toyworld", "ingest", "kvstore", "query", "workers", "api", "bench", "top"},
    "models": {"toyworld", "ingest", "kvstore", "query", "workers", "api", "bench", "top"},
    "oracles": {"toyworld", "ingest", "kvstore", "query", "workers", "api", "bench", "top"},
    "kvstore": {"models", "oracles", "toyworld", "ingest", "query", "workers", "api", "bench", "top"},
    "query": {"ingest", "workers", "api", "bench", "toyworld", "top"},
    "ingest": {"query", "workers", "api", "bench", "toyworld", "top"},
    "toyworld": {"ingest", "kvstore", "query", "workers", "api", "bench", "top"},
    "workers": {"api", "bench", "toyworld", "top"},
    "api": {"bench", "toyworld", "top"},
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module we ship."""
    out = {}
    for folder in FOLDERS:
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts) if parts[0] == "videokv" else "videokv." + ".".join(parts)
            out[name] = f
    return out


def layer(module: str) -> str:
    """engine, models, ..., "shared" (videokv's base modules) or "top" (the rest of videokv/)."""
    if module in SHARED:
        return "shared"
    part = module.split(".")[1]
    return "top" if part not in FOLDERS or part == "videokv" else part


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of ours it imports. `from pkg import name` counts as pkg.name
    where that is a module, else as pkg."""
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:          # "import videokv.x.y" of a module of ours
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules_or_folders():
    graph = imports(module_files())
    assert cycles(graph) == []
    folders: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            if layer(a) != layer(b) and "shared" not in (layer(a), layer(b)):
                folders[layer(a)].add(layer(b))
    assert cycles(folders) == [], dict(folders)


def test_no_arrow_against_the_layers():
    graph = imports(module_files())
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                   if layer(b) in FORBIDDEN.get(layer(a), ()))
    assert wrong == []


def test_only_the_composition_root_reads_settings():
    graph = imports(module_files())
    readers = sorted(a for a, targets in graph.items() if "videokv.settings" in targets)
    assert all(layer(r) == "top" for r in readers), readers
    for mod, path in module_files().items():
        if layer(mod) != "top":
            assert "get_settings" not in path.read_text(), f"{mod} reads the settings itself"


def test_the_layer_check_sees_a_forbidden_arrow(tmp_path):
    """The parser resolves relative and function-level imports (a check that could not see
    them would pass on anything)."""
    mods = {"videokv.engine": tmp_path / "e" / "__init__.py", "videokv.engine.a": tmp_path / "e" / "a.py",
            "videokv.query.b": tmp_path / "b.py"}
    mods["videokv.engine"].parent.mkdir()
    mods["videokv.engine"].write_text("")
    mods["videokv.engine.a"].write_text("def f():\n    from ..query import b\n")
    mods["videokv.query.b"].write_text("from videokv.engine.a import f\n")
    graph = imports(mods)
    assert graph["videokv.engine.a"] == {"videokv.query.b"}
    assert cycles(graph) == [["videokv.engine.a", "videokv.query.b"]]


def test_engine_is_the_method_alone():
    """engine/ holds the method (about 1.5-2k lines), nothing of the checkpoints, oracles or toy world."""
    lines = sum(len(f.read_text().splitlines()) for f in (ROOT / "engine").glob("*.py"))
    assert lines <= 2000, lines

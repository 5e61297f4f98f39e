"""The package's shape (issue 16): modules a newcomer reads in one sitting, no import cycles between
modules (imports inside functions and under TYPE_CHECKING counted), no module importing another's
private name. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tsugiki"
MAX_LINES = 450


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _owner(name: str, modules: dict[str, Path]) -> str:
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module -> the project modules it imports (anywhere in its body), and (module, 'mod.name') for
    each private name imported from another module."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[tuple[str, str]] = []
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "tsugiki"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "tsugiki":
                    continue
                for a in node.names:
                    if f"{base}.{a.name}" in modules:
                        targets.append(f"{base}.{a.name}")
                        continue
                    targets.append(base)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append((mod, f"{base}.{a.name}"))
            graph[mod] |= {t for t in (_owner(t, modules) for t in targets) if t != mod}
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "tsugiki"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from tsugiki.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("import tsugiki.sub.a\nfrom tsugiki.sub.a import _hidden\n")
    (pkg / "d.py").write_text("from tsugiki.sub import a\n")
    graph, private = import_graph(_modules(pkg))
    assert cycles(graph) == [["tsugiki.sub.a", "tsugiki.sub.b", "tsugiki.sub.c"]]
    assert private == [("tsugiki.sub.c", "tsugiki.sub.a._hidden")]
    assert graph["tsugiki.d"] == {"tsugiki.sub.a"}


def test_no_import_cycles_and_no_private_imports():
    graph, private = import_graph(_modules())
    assert cycles(graph) == []
    assert private == []


def test_no_import_cycles_between_subpackages():
    """merging, vlm, diffusion, benchmarks, factory, evolution, demo, commands: a layered whole."""
    graph, _ = import_graph(_modules())
    top = lambda name: ".".join(name.split(".")[:2])  # noqa: E731
    packages: dict[str, set[str]] = {top(m): set() for m in graph}
    for mod, targets in graph.items():
        packages[top(mod)] |= {top(t) for t in targets if top(t) != top(mod)}
    assert "tsugiki.benchmarks" in packages["tsugiki.evolution"]  # the graph is the real one
    assert cycles(packages) == []


def test_modules_stay_readable_in_one_sitting():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules().values()}
    assert len(sizes) > 100
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}

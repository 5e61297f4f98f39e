"""The package's shape (issues 16 and 29): modules a newcomer reads in one sitting, no import cycles
between modules (imports inside functions and under TYPE_CHECKING counted), no module importing
another's private name, one home per search kind, and each list of names (choices, ``one_of``,
``Literal``, module constants) declared in one module only. Read from the source with ``ast``; nothing
is imported."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
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


# --- one home for each thing (issue 29) -------------------------------------------------------------

_NAME = re.compile(r"(?!\d)\w[\w.+-]*\Z")


def _name_set(node: ast.AST) -> frozenset[str] | None:
    elts = node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else None
    if elts and len(elts) >= 2 and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                       and _NAME.match(e.value) for e in elts):
        return frozenset(e.value for e in elts)
    return None


def _called(node: ast.AST) -> str | None:
    return getattr(node, "id", None) or getattr(node, "attr", None)


def name_lists(tree: ast.Module) -> list[tuple[frozenset[str], int]]:
    """The lists of names a module declares: a module-level constant, argparse ``choices=``, the
    arguments of ``one_of(...)`` and the values of ``Literal[...]`` (two or more name-like strings)."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and (n := _name_set(node.value)):
            found.append((n, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found += [(n, node.lineno) for kw in node.keywords if kw.arg == "choices" and (n := _name_set(kw.value))]
            if _called(node.func) == "one_of" and (n := _name_set(ast.Tuple(elts=node.args))):
                found.append((n, node.lineno))
        elif isinstance(node, ast.Subscript) and _called(node.value) == "Literal" and (n := _name_set(node.slice)):
            found.append((n, node.lineno))
    return found


def repeated_name_lists(modules: dict[str, Path]) -> dict[tuple[str, ...], list[str]]:
    """Name lists declared (as the same set of names) in more than one module: names -> 'module:line'."""
    where: dict[frozenset[str], dict[str, int]] = defaultdict(dict)
    for mod, path in modules.items():
        for names, line in name_lists(ast.parse(path.read_text(encoding="utf-8"))):
            where[names].setdefault(mod, line)
    return {tuple(sorted(n)): [f"{m}:{line}" for m, line in sorted(mods.items())]
            for n, mods in where.items() if len(mods) > 1}


def second_homes(root: Path = PACKAGE) -> list[str]:
    """Modules of ``evolution`` outside ``evolution/kinds`` named after a search kind's home there
    (``kinds/NAME.py`` or ``kinds/NAME/``): a kind's space, problem, plan and plots live in one place."""
    kinds = root / "evolution" / "kinds"
    homes = {p.stem for p in kinds.iterdir() if (p.suffix == ".py" or (p / "__init__.py").exists())
             and not p.name.startswith("__")}
    return sorted(str(p.relative_to(root.parent)) for p in (root / "evolution").rglob("*.py")
                  if kinds not in p.parents and (p.stem if p.name != "__init__.py" else p.parent.name) in homes)


def test_the_layout_checks_find_a_second_home_and_a_repeated_name_list(tmp_path):
    pkg = tmp_path / "tsugiki"
    (pkg / "evolution" / "kinds" / "dfs").mkdir(parents=True)
    for f in ("__init__.py", "evolution/__init__.py", "evolution/kinds/__init__.py", "evolution/kinds/ps.py",
              "evolution/kinds/dfs/__init__.py", "evolution/runner.py"):
        (pkg / f).write_text("")
    (pkg / "evolution" / "ps.py").write_text("KINDS = ('a', 'b')\n")
    (pkg / "evolution" / "dfs.py").write_text("from typing import Literal\nArch = Literal['b', 'a']\n")
    (pkg / "cli.py").write_text("def f(p, one_of):\n    p.add_argument('--x', choices=['a', 'b'])\n"
                                "    one_of('x', 'y')\n    p.add_argument('-o', '--out')\n")
    (pkg / "other.py").write_text("def g(one_of):\n    return one_of('y', 'x'), ['a', 'b']\n")
    assert second_homes(pkg) == ["tsugiki/evolution/dfs.py", "tsugiki/evolution/ps.py"]
    assert repeated_name_lists(_modules(pkg)) == {
        ("a", "b"): ["tsugiki.cli:2", "tsugiki.evolution.dfs:2", "tsugiki.evolution.ps:1"],
        ("x", "y"): ["tsugiki.cli:3", "tsugiki.other:2"]}  # a list inside a function is a use, not a declaration


def test_one_home_per_search_kind():
    assert second_homes() == []


#: the same names for different things, on purpose: the demo has one stage per merge family, named after it
DIFFERENT_THINGS = {("lm", "sdxl", "vlm"): {"tsugiki.demo.run", "tsugiki.families"}}


def test_each_name_list_is_declared_in_one_module():
    repeated = repeated_name_lists(_modules())
    for names, modules in DIFFERENT_THINGS.items():
        if {w.partition(":")[0] for w in repeated.get(names, ())} == modules:
            del repeated[names]
    assert repeated == {}


def test_no_registration_by_discovery():
    """Registries are filled by explicit lists (issue 29): no module walks a package to import its modules."""
    users = [m for m, p in _modules().items() for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and "pkgutil" in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])]
    assert users == []


def test_tests_are_laid_out_like_the_package():
    """tests/NAME/ tests tsugiki/NAME/ (tests/data holds fixtures); the root keeps tests of top-level modules
    and of the whole. Basenames stay unique: pytest imports each test file by its name."""
    tests = Path(__file__).resolve().parent
    dirs = sorted(d.name for d in tests.iterdir() if d.is_dir() and d.name not in ("data", "__pycache__"))
    assert dirs and [d for d in dirs if not (PACKAGE / d / "__init__.py").exists()] == []
    files = [p.name for p in tests.rglob("test_*.py") if "data" not in p.relative_to(tests).parts]
    assert len(files) == len(set(files)) and len(files) > 50

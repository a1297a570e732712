"""The engine's layers, as synapse_core.LAYERS writes them down: no module imports a higher layer,
no modules import each other in a circle, no module is over the size limit. Every import counts,
including those inside functions (a late import that hides a circle is still a circle)."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import synapse_core

ENGINE = Path(synapse_core.__file__).resolve().parent
MAX_LINES = 400
FACADE = {"__init__", "__main__"}  # the package's own top: above every layer


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, for every .py file under `root` (a package folder).

    `from X import a` counts as importing X.a when that is a module, else X; relative imports are
    resolved; importlib.import_module("literal") counts too.
    """
    files = {_module_name(root, p): p for p in root.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
                targets = subs if len(subs) == len(node.names) else [module, *subs]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                targets = [str(node.args[0].value)]
            for target in targets:
                while target and target not in known:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def layer_of(module: str) -> str | None:
    """The subpackage a module belongs to; None for the package's own top (its facade)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in FACADE:
        return None
    return parts[1]


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...]) -> list[str]:
    rank = {layer: i for i, layer in enumerate(layers)}
    found = []
    for module, deps in sorted(graph.items()):
        own = layer_of(module)
        if own is None:
            continue
        for dep in sorted(deps):
            other = layer_of(dep)
            if other is not None and rank[other] > rank[own]:
                found.append(f"{module} ({own}) imports {dep} ({other})")
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


@pytest.fixture(scope="module")
def graph():
    return import_graph(ENGINE)


def test_every_subpackage_has_a_place_in_the_layer_order(graph):
    subpackages = {p.name for p in ENGINE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages <= set(synapse_core.LAYERS), subpackages - set(synapse_core.LAYERS)
    assert len(subpackages) >= 8
    flat = sorted(p.name for p in ENGINE.glob("*.py") if p.stem not in FACADE)
    assert flat == []  # every module lives in a subpackage
    assert any(deps for deps in graph.values())  # the walk really saw imports


def test_no_module_imports_a_higher_layer(graph):
    assert upward_imports(graph, synapse_core.LAYERS) == []


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_no_module_is_over_the_size_limit():
    long = {str(p.relative_to(ENGINE)): n for p in ENGINE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_subpackages_say_what_they_hold():
    for layer in synapse_core.LAYERS:
        init = ENGINE / layer / "__init__.py"
        if init.exists():
            assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), layer


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "pkg"


def test_the_checks_fail_on_a_synthetic_package_with_a_circle_and_an_upward_import(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    from ..high import c  # hidden in a function\n",
        "pkg/low/b.py": "from . import a\n",
        "pkg/high/__init__.py": "",
        "pkg/high/c.py": "from pkg.low.b import g\n",
        "pkg/high/d.py": "import importlib\nimportlib.import_module('pkg.high.c')\n",
    })
    graph = import_graph(root)
    assert graph["pkg.low.a"] == {"pkg.high.c"}
    assert graph["pkg.high.d"] == {"pkg.high.c"}
    assert upward_imports(graph, ("low", "high")) == ["pkg.low.a (low) imports pkg.high.c (high)"]
    assert circles(graph) == [["pkg.high.c", "pkg.low.a", "pkg.low.b"]]
    # the same package without the late import is clean
    (root / "low" / "a.py").write_text("def f():\n    return 1\n")
    graph = import_graph(root)
    assert upward_imports(graph, ("low", "high")) == [] and circles(graph) == []

"""Layers point one way: no import cycles among the project's modules (imports inside functions count too),
`adapters/` imports nothing from `demo/`, the product package imports the bench only where
`python -m demo bench` runs it, and the leaf modules stay leaves."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adapters", "demo", "bench")

# Leaves: modules many others import, which import (from this project) only what is listed.
LEAVES = {
    "demo.memory": set(),
    "demo.rounding": set(),
    "demo.threads": set(),
    "demo.params": set(),
    "demo.registry": {"adapters"},
    "demo.stream": set(),
    "demo.limits": {"demo.registry", "demo.stream"},
    "demo.bf16kernel": set(),
    "demo.decodeplan": {"demo.registry", "demo.bf16kernel"},
    "demo.loaded": {"adapters", "adapters.quant", "demo.limits", "demo.memory", "demo.params", "demo.registry"},
}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks: annotations only, never run."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (a package counts as its __init__)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports the module pkg.sub where there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name: its nearest module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_adapters_import_nothing_from_demo_or_the_bench():
    graph = import_graph()
    wrong = {f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == "adapters"
             for t in targets if t.split(".")[0] != "adapters"}
    assert wrong == set()


def test_only_the_command_line_reaches_the_bench():
    graph = import_graph()
    wrong = {f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == "demo" and m != "demo.cli"
             for t in targets if t.split(".")[0] == "bench"}
    assert wrong == set()


def test_leaf_modules_stay_leaves():
    graph = import_graph()
    wrong = {f"{leaf} -> {t}" for leaf, allowed in LEAVES.items() for t in graph[leaf] - allowed}
    assert wrong == set()


def test_a_cycle_through_an_import_inside_a_function_is_seen(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .n import g\n")
    assert imports_of("pkg.m", module, {"pkg.m", "pkg.n"}) == {"pkg.n"}

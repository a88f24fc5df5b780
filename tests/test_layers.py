"""The house rules, from the code's own imports (every import statement, also inside functions):

- nothing under ``nnlab/`` imports ``diagnostics``, ``compression``, ``pages`` or ``app``;
- ``compression`` never imports ``diagnostics`` (diagnostics may read compression's records and models);
- no import cycle between the project's modules (a package's ``__init__`` counts as a module);
- no folder holds more than 30 % of the non-test lines.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", "bench", "docs", ".venv", "__pycache__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([x for x in parts if x] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges[name].add(t)
    return mods, edges


def _cycles(mods: dict[str, Path], edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in list(mods):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    mods, edges = _graph()
    assert _cycles(mods, edges) == []


def test_the_foundation_imports_nothing_above_it_and_compression_not_diagnostics():
    mods, edges = _graph()
    top = lambda m: m.split(".")[0]  # noqa: E731
    upward = sorted(f"{a} -> {b}" for a in mods for b in edges[a]
                    if top(a) == "nnlab" and top(b) in ("diagnostics", "compression", "pages", "app"))
    sideways = sorted(f"{a} -> {b}" for a in mods for b in edges[a]
                      if top(a) == "compression" and top(b) in ("diagnostics", "pages", "app"))
    assert upward == [] and sideways == []


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The checks above would pass for the wrong reason if function-level imports were missed."""
    mods, edges = _graph()
    assert "nnlab.jobs.refs" in edges["nnlab.jobs.kinds"]  # imported at module level
    assert "nnlab.models.zoo" in edges["nnlab.models.registry"]  # imported inside functions only


def test_no_folder_holds_more_than_30_percent_of_the_lines():
    lines: dict[str, int] = defaultdict(int)
    for p in _modules().values():
        lines[str(p.parent.relative_to(ROOT))] += sum(1 for _ in p.open(encoding="utf-8"))
    total = sum(lines.values())
    big = max(lines, key=lines.get)
    assert lines[big] / total <= 0.30, (big, lines[big], total)

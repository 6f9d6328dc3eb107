"""Guards on the package layout (issue 15): short modules, no import cycles, no parallel pipeline,
hooks only in the measuring engine, a CLI that knows nothing about processes.

These read the source files (ast / text); nothing is imported, so they run in well under a second.
Every failure names the file and line to look at.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "llmsculpt"
MAX_LINES = 350
HOOK_CALLS = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
              "register_full_backward_pre_hook", "register_post_accumulate_grad_hook")
ENV_VARS = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
PROCESS_NAMES = {"world_size_from_env", "is_main_process", "Processes"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/llmsculpt (packages by their __init__)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


# ---- (a) module length ------------------------------------------------------------------
def test_no_module_is_over_the_line_limit():
    long = {_rel(p): n for p in PKG.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): " + ", ".join(
        f"{path} ({n} lines)" for path, n in sorted(long.items(), key=lambda kv: -kv[1]))


# ---- (b) import cycles ------------------------------------------------------------------
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported: the module body, and the bodies of
    top-level try/if blocks (except ``if TYPE_CHECKING``); never those inside functions or classes."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _top_level_imports(block)


def _targets(node: ast.stmt, module: str, is_pkg: bool, known: set[str]) -> list[str]:
    """The llmsculpt modules an import statement loads (the deepest existing module of each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_pkg else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def _import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import statement}."""
    mods = _modules()
    known = set(mods)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for node in _top_level_imports(tree.body):
            for target in _targets(node, name, path.name == "__init__.py", known):
                if target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c), c[0]) for c in comps]


def _one_cycle(graph: dict[str, dict[str, int]], comp: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in comp:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]


def test_no_import_cycles_among_module_level_imports():
    graph, mods = _import_graph(), _modules()
    cycles = _cycles(graph)
    lines = []
    for cyc in cycles:
        hops = [f"{a} ({_rel(mods[a])}:{graph[a][b]} imports {b})" for a, b in zip(cyc, cyc[1:])]
        lines.append(" -> ".join(hops))
    assert not cycles, "import cycles (move the shared piece down, or import inside the function):\n  " + \
        "\n  ".join(lines)


def test_the_import_scanner_reads_only_module_level_imports():
    code = (
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "from llmsculpt.plan import Plan\n"
        "from . import sibling\n"
        "from ..models import spec\n"
        "try:\n    from llmsculpt.errors import SculptError\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from llmsculpt.api import prune\n"
        "def f():\n    from llmsculpt.run import engine\n"
    )
    known = {"llmsculpt", "llmsculpt.plan", "llmsculpt.errors", "llmsculpt.api", "llmsculpt.run",
             "llmsculpt.run.engine", "llmsculpt.io", "llmsculpt.io.sibling", "llmsculpt.models",
             "llmsculpt.models.spec"}
    nodes = list(_top_level_imports(ast.parse(code).body))
    found = [t for n in nodes for t in _targets(n, "llmsculpt.io.files", False, known)]
    assert found == ["llmsculpt.plan", "llmsculpt.io.sibling", "llmsculpt.models.spec", "llmsculpt.errors"]


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


# ---- (c) no parallel pipeline ------------------------------------------------------------
def test_pretrain_package_is_gone():
    old = PKG / "pretrain"
    left = sorted(_rel(p) for p in old.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
        if old.exists() else []
    assert not left, "src/llmsculpt/pretrain/ must not exist (its pieces live in importance/, methods/, run/); " \
        f"still there: {', '.join(left)}"


# ---- (d) hooks only in the measuring engine ----------------------------------------------
def test_only_the_measuring_engine_registers_hooks():
    pattern = re.compile(r"\b(" + "|".join(HOOK_CALLS) + r")\s*\(")
    allowed = PKG / "measure"
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if allowed in path.parents:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if (m := pattern.search(line)) and not line.lstrip().startswith("#"):
                found.append(f"{_rel(path)}:{n} ({m.group(1)})")
    assert not found, "module hooks registered outside src/llmsculpt/measure/ (move them into measure/hooks.py " \
        "and use the engine):\n  " + "\n  ".join(found)


# ---- (e) the CLI knows nothing about processes --------------------------------------------
def _rank_reads(tree: ast.AST):
    """(line, what) for every read of a launcher variable or use of torch.distributed in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ENV_VARS:
            yield node.lineno, f"reads ${node.value}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("torch.distributed"):
                    yield node.lineno, f"imports {a.name}"
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.startswith("torch.distributed") or (mod == "torch" and any(a.name == "distributed"
                                                                               for a in node.names)):
                yield node.lineno, f"imports from {mod}"
        elif isinstance(node, ast.Attribute) and node.attr == "distributed" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            yield node.lineno, "uses torch.distributed"


def _process_helpers(tree: ast.AST):
    """(line, what) for every import of the run engine's process helpers."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name in PROCESS_NAMES:
                    yield node.lineno, f"imports {a.name} from {node.module}"


def _cli_findings(check) -> list[str]:
    found = []
    for path in sorted((PKG / "cli").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [f"{_rel(path)}:{line} {what}" for line, what in sorted(set(check(tree)))]
    return found


def test_cli_reads_no_rank_or_world_size():
    found = _cli_findings(_rank_reads)
    assert not found, "the CLI must know nothing about ranks (the API verbs and run/ decide who saves):\n  " + \
        "\n  ".join(found)


def test_cli_does_not_ask_about_processes():
    found = _cli_findings(_process_helpers)
    assert not found, "the CLI asks the run engine about processes (move the decision into the API verb):\n  " + \
        "\n  ".join(found)

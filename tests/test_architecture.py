"""The house rules of docs/ARCHITECTURE.md, checked on the source: one package per stage of the
data's way (data -> supernets -> posterior -> slim -> search -> export -> retrain -> report), no
stage imports a later one, no two modules import each other (no import cycle at all), the report
stage never imports torch, and no function is longer than a screen without a reason above it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pgnas"
STAGES = ["data", "supernets", "posterior", "slim", "search", "export", "retrain", "report"]
SHARED = {"errors", "config", "presets", "profile"}  # cross-cutting: any stage may use them; they use no stage
TOP = {"workflow", "cli", "__init__", "__main__"}  # on top: they chain the stages
LONG = 80  # lines; a longer function says why in a "# long: ..." comment right above it


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every pgnas module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import submodule` reads the submodule; `from pkg import name`, the package
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if n in known]
            if len(names) < len(subs):
                names.append(node.module)
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n.startswith("pgnas"):
                found.add(n)
    return found


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports_of(p, set(mods)) if i != m and i != "pgnas"} for m, p in mods.items()}


def test_no_stage_imports_a_later_one():
    bad = []
    for mod, deps in graph().items():
        mine = part(mod)
        for dep in deps:
            theirs = part(dep)
            if mine in TOP or theirs == mine:
                continue
            if mine in SHARED and theirs not in SHARED:
                bad.append(f"{mod} (shared) imports stage module {dep}")
            elif mine in STAGES and theirs in STAGES and STAGES.index(theirs) > STAGES.index(mine):
                bad.append(f"{mod} ({mine}) imports {dep} of the later stage {theirs}")
            elif mine in STAGES and theirs in TOP:
                bad.append(f"{mod} imports {dep}, which sits on top of the stages")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                cycles.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_report_stage_never_imports_torch():
    for path in (SRC / "report").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not any(n == "torch" or n.startswith("torch.") for n in names), path


def test_functions_read_in_one_screen():
    long = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                above = lines[first - 2].strip() if first >= 2 else ""
                if n > LONG and not above.startswith("# long:"):
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)

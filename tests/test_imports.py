"""The import graph, read with `ast` (nothing is imported): no stage imports a later one, and no module imports
itself through others. The order: common < data_pipeline < training < evaluation < analysis < experiments (slurm/,
tools/ and tests/ may import anything): analysis draws from result files, experiments train and evaluate cells
and call analysis to report them. Imports inside functions count (they run too); an `if __name__ == "__main__":` block does
not, because there the module runs as `__main__` and a module importing it back loads a second copy, no cycle."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["common", "data_pipeline", "training", "evaluation", "analysis", "experiments"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for stage in STAGES for p in sorted((REPO / stage).rglob("*.py"))}


def _is_main_guard(node) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators))


def imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement of the file outside a __main__ block.
    `from pkg import name` counts as pkg.name when that is a module, else as pkg."""
    out = []

    def visit(node):
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            if subs:
                out.extend((s, node.lineno) for s in subs)
            elif node.module in known:
                out.append((node.module, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    return {name: [(t, line) for t, line in imports(p, set(mods)) if t != name] for name, p in mods.items()}


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[0])


def cycles(g: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in g.get(v, []):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def describe(comp: list[str], g) -> str:
    return "; ".join(f"{a}:{line} -> {b}" for a in comp for b, line in g[a] if b in comp)


def test_the_parser_sees_every_stage_and_the_known_edges():
    g = graph()
    assert {m.split(".")[0] for m in g} == set(STAGES)
    assert any(t == "common.files" for t, _ in g["data_pipeline.sources"])
    assert any(t == "training.data" for t, _ in g["evaluation.likelihood"] + g["analysis.audit"])
    assert any(t == "analysis.demo_report" for t, _ in g["experiments.demo"])


def test_analysis_only_draws_from_result_files():
    """Nothing in analysis/ trains a model or runs an evaluation: those are the experiments stage's."""
    g = graph()
    bad = [f"{a} imports {b}" for a, edges in g.items() if a.startswith("analysis")
           for b, _ in edges if b in ("training.train", "evaluation.evaluate")]
    assert not bad, bad


def test_the_checks_catch_a_later_stage_import_and_a_cycle(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\ndef f():\n    from analysis.results import x\n"
                   "if __name__ == '__main__':\n    from analysis.tables import y\n")
    assert imports(src, {"analysis.results", "analysis.tables"}) == [("analysis.results", 3)]
    g = {"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)], "d": [("a", 4)]}
    assert cycles(g) == [["a", "b", "c"]]


def test_no_stage_imports_a_later_stage():
    g = graph()
    bad = [f"{a} ({modules()[a].relative_to(REPO)}:{line}) imports {b}, a later stage"
           for a, edges in g.items() for b, line in edges if stage(b) > stage(a)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    found = cycles(g)
    assert not found, "\n".join(f"cycle {c}: {describe(c, g)}" for c in found)


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp makes 0600 files; results written atomically must stay readable by the group, as open() makes them."""
    import os

    from common.files import atomic_path, atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    mode = os.stat(plain).st_mode & 0o777
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "b.bin").st_mode & 0o777 == mode

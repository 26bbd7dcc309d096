"""docs/tests.md says what the test suite is, and this keeps it true: every test file is listed once with the
tiers its tests are marked with, every component a test can require (`need("<component>", ...)`) is named there
and in CI's EAFT_REQUIRE where CI installs it, and no test skips by another route (pytest.importorskip bypasses
need(), so CI would skip it silently)."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
DOC = REPO / "docs" / "tests.md"
TIERS = ("slow", "integration", "distributed", "slurm", "vllm", "bfcl", "rehearsal")


def _mark(node) -> str | None:
    """'slow' for a decorator or pytestmark value pytest.mark.slow (called or not), else None."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
        return node.attr if node.attr in TIERS else None
    return None


def tiers_of(path: Path) -> set[str]:
    """The tiers a test file's tests run in: each test's marker, or `default` for an unmarked one."""
    tree = ast.parse(path.read_text())
    module = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            module |= {m for v in values if (m := _mark(v))}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            marks = {m for d in node.decorator_list if (m := _mark(d))} | module
            out |= marks or {"default"}
    return out


def documented() -> dict[str, set[str]]:
    """{file: tiers} from the file table of docs/tests.md."""
    rows = re.findall(r"^\| `(test_\w+\.py)` \| ([^|]+) \|", DOC.read_text(), re.MULTILINE)
    return {f: {t for t in ("default", *TIERS) if re.search(rf"\b{t}\b", tiers)} for f, tiers in rows}


def components_used() -> set[str]:
    return {m for p in TESTS.glob("*.py") for m in re.findall(r'need\(\s*"(\w+)"', p.read_text())}


def test_every_test_file_is_documented_with_its_tiers():
    files = {p.name: tiers_of(p) for p in sorted(TESTS.glob("test_*.py"))}
    doc = documented()
    assert sorted(set(files) - set(doc)) == [], "add these to docs/tests.md's file table"
    assert sorted(set(doc) - set(files)) == [], "docs/tests.md lists files that do not exist"
    wrong = {f: (sorted(doc[f]), sorted(t)) for f, t in files.items() if doc[f] != t}
    assert not wrong, f"docs/tests.md's tier column (documented, actual): {wrong}"


def test_every_component_a_test_can_require_is_documented_and_required_by_ci():
    used = components_used()
    text = DOC.read_text()
    listed = set(re.findall(r"`(\w+)`", text.split("The components are", 1)[1].split(".", 1)[0]))
    assert used == listed, f"docs/tests.md names {sorted(listed)}; tests need() {sorted(used)}"
    ci = (REPO / ".ci" / "run").read_text()
    required = {c for line in re.findall(r"EAFT_REQUIRE=([\w,]+)", ci) for c in line.split(",")}
    assert used <= required, f"CI never requires {sorted(used - required)}: their tests could skip there unnoticed"


def test_no_test_skips_around_need():
    """A component a test cannot run without goes through conftest.need (a skip here, a failure in CI)."""
    bad = [f"{p.name}:{i}" for p in sorted(TESTS.glob("*.py")) if p.name != "conftest.py"
           for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bpytest\.importorskip\(", line)]
    assert not bad, f"use conftest.need() instead of pytest.importorskip: {bad}"


def test_the_tier_parser_sees_markers(tmp_path):
    f = tmp_path / "test_x.py"
    f.write_text("import pytest\n@pytest.mark.slow\ndef test_a(): pass\ndef test_b(): pass\n"
                 "@pytest.mark.parametrize('x', [1])\n@pytest.mark.vllm\ndef test_c(x): pass\n")
    assert tiers_of(f) == {"slow", "default", "vllm"}
    f.write_text("import pytest\npytestmark = pytest.mark.slurm\ndef test_a(): pass\n")
    assert tiers_of(f) == {"slurm"}

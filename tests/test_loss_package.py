"""The loss package (packages/eaft-loss, import name eaft_loss) stands alone, and the pipeline is not installed:

- default tier: the project's environment finds eaft_loss but none of the stage packages (common, data_pipeline,
  training, evaluation, analysis, experiments) outside the repository root; the package declares torch as its
  only dependency and the project installs no package of its own; training/losses.py, kept for analysis/, only
  re-exports eaft_loss's own objects, and every `training.losses` import in the repository is among them;
- integration tier: a fresh virtual environment gets torch 2.13.0 and then `pip install --no-deps` of the package
  folder, and runs docs/trainers.md's plain-torch example there, from a folder outside the repository; the
  subdirectory form (`git+file://<checkout>#subdirectory=packages/eaft-loss`) builds a wheel holding the package.

    python -m pytest tests/test_loss_package.py -q                   (default tier, a few seconds)
    python -m pytest tests/test_loss_package.py -m integration -q    (the fresh venv, about a minute)
"""

import ast
import json
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib

from tests.conftest import REPO, need

PACKAGE = REPO / "packages" / "eaft-loss"
STAGES = ["common", "data_pipeline", "training", "evaluation", "analysis", "experiments"]


def run(cmd, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_the_environment_has_the_loss_package_and_no_stage_package(tmp_path):
    """-I (isolated): no PYTHONPATH, no current folder; from tmp_path, only what is installed is importable."""
    code = ("import importlib.util as u, json; "
            f"print(json.dumps({{m: u.find_spec(m) is not None for m in {STAGES + ['eaft_loss']!r}}}))")
    proc = run([sys.executable, "-I", "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found.pop("eaft_loss"), "eaft_loss is not installed: run `make setup`"
    installed = sorted(m for m, yes in found.items() if yes)
    assert not installed, f"stage packages installed into site-packages: {installed}; re-run `make setup`"


def test_the_package_needs_only_torch_and_the_project_installs_no_package():
    package = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert package["name"] == "eaft-loss"
    assert [re.split(r"[<>=!~ \[]", d)[0] for d in package["dependencies"]] == ["torch"]
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert root["tool"]["setuptools"]["packages"] == []
    assert "trl" in root["project"]["optional-dependencies"]


def training_losses_imports() -> dict[str, set[str]]:
    """{file: names} of every `from training.losses import ...` in the repository's Python files."""
    out = {}
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".") or part in ("data", "runs") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "training.losses":
                out.setdefault(str(path.relative_to(REPO)), set()).update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == "training" and \
                    any(a.name == "losses" for a in node.names):
                out.setdefault(str(path.relative_to(REPO)), set()).add("*module*")
    return out


def test_training_losses_only_re_exports_eaft_loss_and_covers_its_importers():
    import eaft_loss.losses as package

    import training.losses as pointer
    assert pointer.__all__, "training/losses.py re-exports nothing"
    for name in pointer.__all__:
        assert getattr(pointer, name) is getattr(package, name), name
    body = ast.parse((REPO / "training" / "losses.py").read_text()).body
    defined = [getattr(n, "name", None) or ast.unparse(n).split("=")[0].strip() for n in body
               if not isinstance(n, (ast.Expr, ast.ImportFrom))]
    assert defined == ["__all__"], f"training/losses.py defines {defined}: it must only re-export eaft_loss"
    importers = training_losses_imports()
    missing = {f: sorted(names - set(pointer.__all__)) for f, names in importers.items() if names - set(pointer.__all__)}
    assert not missing, f"these import names training/losses.py does not re-export (import eaft_loss.losses): {missing}"


def test_the_importer_scan_sees_analysis():
    """The scan above is not vacuous: analysis/ imports from training.losses today (drop this test once it moves)."""
    if not any(f.startswith("analysis/") for f in training_losses_imports()):
        pytest.skip("analysis/ no longer imports training.losses: delete training/losses.py and this test")


# ---------------------------------------------------------------------------------------------------------
# A fresh virtual environment with torch and the package only.


def plain_torch_example() -> str:
    text = (REPO / "docs" / "trainers.md").read_text()
    m = re.search(r"^## Plain torch\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    (block,) = re.findall(r"```python\n(.*?)```", m.group(1), re.DOTALL)
    return block


@pytest.mark.integration
def test_fresh_venv_with_torch_and_the_package_runs_the_docs_example(tmp_path):
    probe = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp_path / "probe",
                 "setuptools>=77"], tmp_path, timeout=300)
    need("pypi", probe.returncode == 0, f"pip cannot fetch the package's build backend: {probe.stderr[-300:]}")
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    assert run([sys.executable, "-m", "venv", venv], tmp_path).returncode == 0
    torch_install = run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], tmp_path)
    need("pypi", torch_install.returncode == 0, f"torch==2.13.0 did not install: {torch_install.stderr[-300:]}")
    # A copy of the folder: an in-tree build writes build/ and *.egg-info next to the sources, never the checkout
    copy = shutil.copytree(PACKAGE, tmp_path / "eaft-loss", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                          "__pycache__"))
    install = run([py, "-m", "pip", "install", "-q", "--no-deps", copy], tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "elsewhere"  # not the repository: nothing of it is importable from here
    work.mkdir()
    (work / "example.py").write_text(plain_torch_example())
    proc = run([py, "example.py"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"EAFT loss after 3 steps: \d+\.\d{4}", proc.stdout), proc.stdout

    check = work / "check.py"
    check.write_text(VENV_CHECK.format(modules=STAGES + ["transformers"]))
    proc = run([py, "-I", check], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    assert info["file"].startswith(str(venv)) and info["found"] == []
    others = sorted(set(info["dists"]) - set(info["torch_closure"]) - {"eaft-loss", "pip", "setuptools"})
    assert "eaft-loss" in info["dists"] and not others, f"installed besides torch and eaft-loss: {others}"


# Run in the fresh venv: where eaft_loss is, which of `modules` are importable, every installed distribution, and
# torch with everything it requires (recursively: jinja2 brings markupsafe, sympy brings mpmath).
VENV_CHECK = """
import importlib.metadata as md, importlib.util as u, json, re
import eaft_loss

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def closure(name, seen):
    key = norm(name)
    if key in seen:
        return seen
    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:  # a requirement whose marker excludes this Python
        return seen
    seen.add(key)
    for req in requires:
        if "extra ==" not in req:
            closure(re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0], seen)
    return seen

print(json.dumps({{"file": eaft_loss.__file__, "found": [m for m in {modules!r} if u.find_spec(m)],
                  "dists": sorted(norm(d.metadata["Name"]) for d in md.distributions()),
                  "torch_closure": sorted(closure("torch", set()))}}))
"""


@pytest.mark.integration
def test_the_subdirectory_install_form_builds_the_package(tmp_path):
    """`pip install "git+<url>#subdirectory=packages/eaft-loss"`, with this checkout's committed HEAD as the URL."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    head = run(["git", "-C", REPO, "ls-tree", "-r", "--name-only", "HEAD", "packages/eaft-loss"], REPO).stdout
    if "packages/eaft-loss/pyproject.toml" not in head:
        pytest.skip("packages/eaft-loss is not committed yet")
    proc = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path,
                f"git+file://{REPO}#subdirectory=packages/eaft-loss"], tmp_path)
    need("pypi", proc.returncode == 0 or "setuptools" not in proc.stderr, proc.stderr[-300:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("eaft_loss-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("__init__", "losses", "linear_losses", "objective", "hf"):
        assert f"eaft_loss/{module}.py" in names
    assert not [n for n in names if n.split("/")[0] in STAGES]

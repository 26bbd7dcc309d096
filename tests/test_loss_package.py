"""The loss package (packages/eaft-loss, import name eaft_loss) stands alone, and the pipeline is not installed:

- default tier: the project's environment finds eaft_loss but none of the stage packages (common, data_pipeline,
  training, evaluation, analysis, experiments) outside the repository root; the package declares torch as its
  only dependency and the project installs no package of its own; no module imports the losses from training/;
- integration tier: a fresh virtual environment gets torch 2.13.0 and then `pip install --no-deps` of the package
  folder, and runs docs/trainers.md's plain-torch example there, from a folder outside the repository; the
  subdirectory form (`git+file://<checkout>#subdirectory=packages/eaft-loss`) builds a wheel holding the package.

    python -m pytest tests/test_loss_package.py -q                   (default tier, a few seconds)
    python -m pytest tests/test_loss_package.py -m integration -q    (the fresh venv, about a minute)
"""

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


def test_nothing_imports_the_losses_from_training():
    """The losses live in eaft_loss alone: no module of the repository imports them through the pipeline's
    training/ (the re-export that bridged the move is gone)."""
    found = [f"{p.relative_to(REPO)}:{i}" for p in REPO.rglob("*.py") if ".venv" not in p.parts
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if re.match(r"\s*(from training(\.losses| import losses)|import training\.losses)", line)]
    assert not found, found
    assert not (REPO / "training" / "losses.py").exists()


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

"""`make demo ARGS=reuse_kept=true` and `make study [PROFILE=v2] ARGS=reuse_kept=true`, as a user runs them on a
fresh clone, on whatever CPU this is: every committed cell is taken as done (nothing trains, nothing is evaluated)
and the committed reports come out byte for byte. Slow tier: each command runs in a copy of the checkout (its data/
linked to this one's, for the SmolLM2 folder and the benchmark bundle) and compares the copy's results/ with the
committed one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, need


def checkout_files() -> list[str]:
    """What a fresh clone holds: tracked files plus new ones git does not ignore (a name-pattern copy would also drop
    configs/data/, which is not the top-level data/)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    need("smollm2", (REPO / "data/assets/smollm2-135m-instruct/config.json").exists(),
         "run `make assets` to build the SmolLM2 folder")
    dest = tmp_path_factory.mktemp("clone") / "repo"
    for name in checkout_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    (dest / "data").symlink_to(REPO / "data")
    return dest


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_hydra" not in p.parts and "data" not in p.parts and "_cache" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("module, profile, cells", [
    ("experiments.demo", "demo_profile=quick", 2), ("experiments.demo", "demo_profile=full", 36),
    ("experiments.study", "study_profile=quick", 6), ("experiments.study", "study_profile=full", 50),
    ("experiments.study", "study_profile=v2", 40)])
def test_reuse_kept_rerenders_the_committed_report_without_training(clone, module, profile, cells):
    before = files(clone / "results")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", module, profile, "reuse_kept=true"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained and evaluated before") == cells, proc.stdout[-3000:]
    assert "[train]" not in proc.stdout and "nothing trained or measured" in proc.stdout
    after = files(clone / "results")
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == [], f"re-rendering changed committed files: {changed}"

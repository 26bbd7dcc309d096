"""The eaft_loss package (packages/eaft-loss) depends on torch alone: imported from its source folder in a fresh
interpreter where transformers, DeepSpeed, hydra, datasets, TRL and this repository's stage packages cannot be
imported, it computes and differentiates every plain and every fused loss, and builds its trainer Objective.
Only `eaft_loss.hf` (trainer logging) imports transformers, and it is the one module left out here.
tests/test_loss_package.py installs the package into a fresh virtual environment as well.

    python -m pytest tests/test_loss_torch_only.py
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "packages" / "eaft-loss" / "src"
BLOCKED = ["transformers", "hydra", "omegaconf", "datasets", "accelerate", "deepspeed", "trl", "peft",
           "training", "data_pipeline", "evaluation", "analysis", "common", "experiments"]

SCRIPT = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"eaft_loss imported {name}, which is blocked here")

sys.meta_path.insert(0, Refuse())
sys.path.insert(0, SRC)
import eaft_loss
from eaft_loss import linear_losses, losses, objective

assert eaft_loss.__file__.startswith(SRC), eaft_loss.__file__
import torch
extra = {"flow": {"sample_weights": torch.ones(2)}, "sft_kl": {"ref_logits": torch.randn(2, 6, 50)}}
for name, fn in eaft_loss.LOSSES.items():
    logits = torch.randn(2, 6, 50, requires_grad=True)
    loss = fn(logits, torch.randint(0, 50, (2, 6)), stats={}, **extra.get(name, {}))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0, name
for name in eaft_loss.LINEAR_LOSSES:
    hidden, weight = torch.randn(2, 6, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    loss = eaft_loss.get_linear_loss(name)(hidden, weight, torch.randint(0, 50, (2, 6)), chunk_size=4, stats={},
                                           **extra.get(name, {}))
    loss.backward()
    assert torch.isfinite(loss) and weight.grad.abs().sum() > 0, name
eaft_loss.Objective("eaft", {"k": 20, "alpha": 1.0, "norm": 3.0}, fused=True)
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
print("ok", len(eaft_loss.LOSSES), len(eaft_loss.LINEAR_LOSSES))
"""


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # -I: isolated mode, so neither PYTHONPATH nor the current folder can make a blocked module findable by accident
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def test_the_package_computes_every_loss_with_only_torch_importable(tmp_path):
    proc = run(f"BLOCKED = {set(BLOCKED)!r}\nSRC = {str(SRC)!r}\n" + SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from eaft_loss import LINEAR_LOSSES, LOSSES
    assert "imported: []" in proc.stdout and f"ok {len(LOSSES)} {len(LINEAR_LOSSES)}" in proc.stdout


def test_the_blocker_really_blocks(tmp_path):
    """The same interpreter set-up refuses a package that imports transformers (so the test above can fail)."""
    bad = tmp_path / "src" / "eaft_loss"
    bad.mkdir(parents=True)
    (bad / "__init__.py").write_text("import transformers\n")
    proc = run(f"BLOCKED = {set(BLOCKED)!r}\nSRC = {str(bad.parent)!r}\n" + SCRIPT, tmp_path)
    assert proc.returncode != 0 and "imported transformers, which is blocked" in proc.stderr

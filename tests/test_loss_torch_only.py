"""training/losses.py depends on torch alone, so it can be copied into another trainer: loaded from its path in a
fresh interpreter where transformers, hydra, datasets and this project's packages cannot be imported, it computes
and differentiates every loss.

    python -m pytest tests/test_loss_torch_only.py
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ["transformers", "hydra", "omegaconf", "datasets", "accelerate", "deepspeed", "trl", "peft",
           "training", "data_pipeline", "evaluation", "analysis", "common"]

SCRIPT = """
import importlib.abc, importlib.util, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"losses.py imported {name}, which is blocked here")

sys.meta_path.insert(0, Refuse())
spec = importlib.util.spec_from_file_location("losses", PATH)
losses = importlib.util.module_from_spec(spec)
sys.modules["losses"] = losses
spec.loader.exec_module(losses)

import torch
extra = {"flow": {"sample_weights": torch.ones(2)}, "sft_kl": {"ref_logits": torch.randn(2, 6, 50)}}
for name, fn in losses.LOSSES.items():
    logits = torch.randn(2, 6, 50, requires_grad=True)
    loss = fn(logits, torch.randint(0, 50, (2, 6)), stats={}, **extra.get(name, {}))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0, name
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
print("ok", len(losses.LOSSES))
"""


def test_losses_compute_with_only_torch_importable(tmp_path):
    code = f"BLOCKED = {set(BLOCKED)!r}\nPATH = {str(REPO / 'training' / 'losses.py')!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from training.losses import LOSSES
    assert "imported: []" in proc.stdout and f"ok {len(LOSSES)}" in proc.stdout


def test_the_blocker_really_blocks(tmp_path):
    """The same interpreter set-up refuses a module that imports transformers (so the test above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import transformers\n")
    code = f"BLOCKED = {set(BLOCKED)!r}\nPATH = {str(bad)!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode != 0 and "imported transformers, which is blocked" in proc.stderr

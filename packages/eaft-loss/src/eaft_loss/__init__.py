"""eaft_loss: Entropy-Adaptive Fine-Tuning (EAFT, arXiv 2601.02151) and its baselines as torch losses, plain (from
the logits) and fused (from the last hidden state and the LM-head weight, chunked, no full logits).

    pip install ./packages/eaft-loss      (from a checkout of the eaft-repro repository; torch is the only dependency)

    from eaft_loss import get_loss, get_linear_loss
    loss = get_loss("eaft")(logits, labels, k=20, alpha=1.0, norm=3.0)                    # logits (B, T, V)
    loss = get_linear_loss("eaft")(hidden, lm_head.weight, labels, k=20, alpha=1.0, norm=3.0)  # hidden (B, T, d)

Modules: `losses` (every method as a gate over per-token tensors: GATES, LOSSES, get_loss), `linear_losses` (the
fused chunked versions: LINEAR_LOSSES, get_linear_loss), `objective` (one callable for a trainer's
`compute_loss_func`, fused or plain, ZeRO-3 aware), `hf` (gate statistics in HF / TRL trainer logs; needs
transformers). How to use them with torch, the HF Trainer, TRL and DeepSpeed: docs/trainers.md in the repository.
"""

from eaft_loss.linear_losses import LINEAR_LOSSES, get_linear_loss
from eaft_loss.losses import GATES, LOSSES, get_loss
from eaft_loss.objective import Objective, resolve_fused

__version__ = "0.1.0"
__all__ = ["GATES", "LINEAR_LOSSES", "LOSSES", "Objective", "get_linear_loss", "get_loss", "resolve_fused"]

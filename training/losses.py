"""A pointer kept for analysis/: the losses moved to the eaft_loss package (packages/eaft-loss/src/eaft_loss/).

This module re-exports, unchanged (the same objects), the names that analysis/ still imports as `training.losses`
(the token statistics, the audit's summaries, Fig. 4's regions, the conflict study). analysis/ is being restructured
in its own branch, so its imports move to `eaft_loss.losses` there; new code imports `eaft_loss` directly.
tests/test_loss_package.py checks that every `training.losses` import in the repository is one of these names.
Delete this file when `git grep -n training.losses -- '*.py'` finds no importer.

    python -c "from training.losses import eaft_gate; import eaft_loss.losses as l; assert eaft_gate is l.eaft_gate"
"""

from eaft_loss.losses import (
    CONFLICT_MAX_ENTROPY,
    CONFLICT_MAX_PROB,
    HIGH_ENTROPY_MIN,
    LOW_ENTROPY_MAX,
    Tokens,
    eaft_gate,
    full_entropy,
    supervised_tokens,
    topk_entropy,
)

__all__ = ["CONFLICT_MAX_ENTROPY", "CONFLICT_MAX_PROB", "HIGH_ENTROPY_MIN", "LOW_ENTROPY_MAX", "Tokens", "eaft_gate",
           "full_entropy", "supervised_tokens", "topk_entropy"]

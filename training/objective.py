"""Our trainer's side of the loss: `MetricsCallback` writes each training log, gate statistics included, to
runs/<run>/metrics.jsonl. The loss itself, handed to `Trainer(compute_loss_func=...)`, is `eaft_loss.Objective`
(packages/eaft-loss: plain or fused, FLOW's weights, SFT-KL's reference, ZeRO-3's gathered head, the statistics);
the callback that adds its statistics to the logs is `eaft_loss.hf.GateStatsCallback`, which this one extends.

    python -m training.train model=tiny method=eaft data=tiny trainer=tiny    (writes runs/<run>/metrics.jsonl)
"""

from __future__ import annotations

import json
from pathlib import Path

from eaft_loss.hf import GateStatsCallback
from eaft_loss.objective import Objective

from common.files import atomic_write_jsonl, read_jsonl


class MetricsCallback(GateStatsCallback):
    """Appends one JSON line per logging step (loss, lr, grad norm, gate statistics) to metrics.jsonl.

    On resume it first drops lines past the checkpoint's step, so a re-run never duplicates steps.
    Put it first in the callback list: it adds the gate statistics to `logs`, which later reporters
    (wandb) then see too.
    """

    def __init__(self, path: str | Path, objective: Objective):
        super().__init__(objective)
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        atomic_write_jsonl(self.path, [r for r in read_jsonl(self.path) if r.get("step", 0) <= state.global_step])

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs if logs is not None else {}
        super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_world_process_zero:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

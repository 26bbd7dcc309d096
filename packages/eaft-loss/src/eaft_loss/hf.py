"""Gate statistics in the logs of a transformers Trainer (and so of TRL's SFTTrainer, its subclass). Needs
transformers; the rest of the package needs torch alone.

    objective = Objective("eaft", {"k": 20, "alpha": 1.0, "norm": 3.0}, fused=True)
    objective.attach(model)
    trainer = Trainer(..., compute_loss_func=objective)       # or trl.SFTTrainer(..., compute_loss_func=objective)
    log_gate_stats(trainer, objective)

Every training log (the one with "loss") then carries the means of the gate statistics over the micro-batches since
the previous log, summed over ranks (`Objective.pop_stats`, `losses.finalize_stats`): gate_mean, token_ce,
entropy_mean, conflict_share, conflict_loss_share, conflict_gate_mean, ce_high_entropy, ce_low_entropy. They go into
the `logs` the reporters receive (wandb, tensorboard: the callback is put first so that they see them) and into
`trainer.state.log_history`, which the Trainer writes to each checkpoint's trainer_state.json.

Try it (in the eaft-repro repository):  python -m pytest tests/test_trainers.py -q
"""

from __future__ import annotations

from transformers import TrainerCallback

from eaft_loss.objective import Objective


class GateStatsCallback(TrainerCallback):
    """Adds `objective.pop_stats()` to each training log. Every rank must run it (pop_stats gathers over ranks):
    the Trainer calls on_log on every rank."""

    def __init__(self, objective: Objective):
        if not isinstance(objective, Objective):
            raise TypeError(f"GateStatsCallback needs the eaft_loss.Objective handed to compute_loss_func, "
                            f"got {type(objective).__name__}")
        self.objective = objective

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # evaluation logs and the final summary (train_loss) carry none
            return
        stats = self.objective.pop_stats()
        logs.update(stats)
        # Trainer.log appended a copy of `logs` to the history before calling the callbacks: complete that copy.
        last = state.log_history[-1] if state.log_history else {}
        if last.get("step") == state.global_step and "loss" in last:
            last.update(stats)


def log_gate_stats(trainer, objective: Objective) -> GateStatsCallback:
    """Put a GateStatsCallback first in `trainer`'s callbacks (Trainer(callbacks=...) would put it after the
    reporters, which would then log without the statistics) and return it."""
    if trainer.compute_loss_func is not objective:
        raise ValueError("log_gate_stats: this objective is not the trainer's compute_loss_func, so it would log "
                         "nothing; pass Trainer(..., compute_loss_func=objective)")
    callback = GateStatsCallback(objective)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback

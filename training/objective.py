"""Connects a loss from `training.losses` to the HF Trainer, without subclassing the Trainer.

`Objective` is handed to `Trainer(compute_loss_func=...)`. The Trainer calls it with the model outputs, the
labels and `num_items_in_batch` (the supervised-token count of the whole gradient-accumulation window, summed
over ranks), which is exactly the denominator the losses need.

Two methods need more than (logits, labels): FLOW a per-sample weight, SFT-KL the frozen base model's logits.
A forward pre-hook on the policy takes `sample_weight` out of the batch before the model sees it and runs the
reference model on the same input, and the loss reads both from `self._extras`. The hook fires on the inner
module, so it works the same under DDP and DeepSpeed.

Fused loss (`fused_loss: auto|true|false` in configs/train.yaml, see `resolve_fused`): the pre-hook also asks
the model for its hidden states and to keep no logits position (`logits_to_keep` = an empty index), so lm_head
computes nothing; the loss then runs `LINEAR_LOSSES[method]` on the last hidden state (transformers ties
`hidden_states[-1]` to the final-norm output, lm_head's input) and lm_head's weight, chunk by chunk, and the full
(B, T, V) logits never exist. Tied embeddings: lm_head.weight IS the embedding Parameter, handed to the loss once,
so its gradient is the embedding's plus the head's, as without fusion. DeepSpeed ZeRO-3: the head weight is
gathered (`deepspeed.zero.GatheredParameters`) for the duration of the loss only; the fused loss computes its
weight gradient inside that forward, so backward needs no gathered weight.

Gate statistics (`losses.token_stats`) are summed over the micro-batches between two logging steps and popped by
`MetricsCallback`, which writes `metrics.jsonl` in the run directory.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from common.files import atomic_write_jsonl, read_jsonl
from training.linear_losses import LINEAR_LOSSES, UNSUPPORTED
from training.losses import finalize_stats, get_loss


def resolve_fused(setting, method: str) -> bool:
    """`fused_loss`: auto (on where the method has a fused version), true (on, or an error), false (off)."""
    if setting == "auto":
        return method in LINEAR_LOSSES
    if setting is True or setting == "true":
        if method not in LINEAR_LOSSES:
            raise ValueError(f"fused_loss=true, but method {method!r} has no fused version: "
                             f"{UNSUPPORTED.get(method, 'unknown method')}. Train it with fused_loss=false "
                             f"(or auto, which turns fusion off for it)")
        return True
    if setting is False or setting == "false":
        return False
    raise ValueError(f"fused_loss must be auto, true or false, got {setting!r}")


def fused_unsupported(model: torch.nn.Module) -> str | None:
    """Why this model cannot feed the fused loss (None if it can)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return f"its output layer ({type(head).__name__}) is not a bias-free nn.Linear"
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return f"{type(model).__name__}.forward takes no logits_to_keep, so it would compute the full logits"
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(model.config, key, None) not in (None, 1, 1.0):
            return f"its config sets {key}, which the fused loss does not apply to the logits"
    return None


_SAID_GATHER = False


def _gathered(weight: torch.Tensor):
    """ZeRO-3 partitions parameters outside their module's forward: gather the head weight for the loss."""
    global _SAID_GATHER
    if hasattr(weight, "ds_id"):
        import deepspeed

        if not _SAID_GATHER:
            print(f"[objective] fused loss: gathering the ZeRO-3 partitioned head weight "
                  f"{tuple(weight.ds_shape)} for each loss call", flush=True)
            _SAID_GATHER = True
        return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    return contextlib.nullcontext()


class Objective:
    def __init__(self, method: str, hparams: dict | None = None, ref_model: torch.nn.Module | None = None,
                 collect_stats: bool = True, fused: bool = False, chunk_size: int | None = None):
        self.method = method
        self.loss_fn = get_loss(method)
        self.fused = resolve_fused(True, method) if fused else False
        self.chunk_size = chunk_size
        self._head = None
        self.hparams = dict(hparams or {})
        self.ref_model = ref_model
        self.collect_stats = collect_stats
        self._extras: dict = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._training = True
        if method == "sft_kl" and ref_model is None:
            raise ValueError("method=sft_kl needs a frozen reference model (method.ref_model)")

    def attach(self, model: torch.nn.Module) -> None:
        """Register the pre-hook that moves per-batch extras out of the model's inputs."""
        if self.fused:
            reason = fused_unsupported(model)
            if reason:
                raise ValueError(f"fused_loss is on but {reason}; set fused_loss=false")
            self._head = model.get_output_embeddings()
        model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module, args, kwargs):
        self._training = module.training
        extras = {}
        if "sample_weight" in kwargs:
            extras["sample_weights"] = kwargs.pop("sample_weight")
        if self.ref_model is not None:
            with torch.no_grad():
                extras["ref_logits"] = self.ref_model(input_ids=kwargs["input_ids"],
                                                      attention_mask=kwargs.get("attention_mask")).logits
        if self.fused:
            # Keep no logits position (lm_head runs on zero rows) and return the hidden states instead.
            device = kwargs["input_ids"].device if "input_ids" in kwargs else None
            kwargs["logits_to_keep"] = torch.zeros(0, dtype=torch.long, device=device)
            kwargs["output_hidden_states"] = True
        self._extras = extras
        return args, kwargs

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the batch has no 'labels'; the collator must produce them")
        stats = {} if (self.collect_stats and self._training) else None
        if self.method == "flow" and "sample_weights" not in self._extras:
            raise ValueError("method=flow but the batch has no sample_weight; train with the precomputed "
                             "FLOW weights (python -m training.precompute ...)")
        if self.fused:
            hidden = outputs["hidden_states"][-1]  # (B, T, d) after the final norm: lm_head's input
            weight = self._head.weight  # (V, d); the embedding Parameter itself when tied
            with _gathered(weight):
                loss = LINEAR_LOSSES[self.method](hidden, weight, labels, num_items_in_batch=num_items_in_batch,
                                                  chunk_size=self.chunk_size, stats=stats, **self.hparams,
                                                  **self._extras)
        else:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            if logits is None:
                raise ValueError("the model returned no logits; methods here need the full logits")
            loss = self.loss_fn(logits, labels, num_items_in_batch=num_items_in_batch, stats=stats,
                                **self.hparams, **self._extras)
        self._extras = {}
        for k, v in (stats or {}).items():
            self._sums[k] += v
        return loss

    def pop_stats(self) -> dict[str, float]:
        sums = dict(self._sums)
        self._sums.clear()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Each rank saw only its share of the batch: add every rank's sums (all ranks log, so all call this).
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, sums)
            sums = {k: sum(r.get(k, 0.0) for r in ranks) for k in set().union(*ranks)}
        return finalize_stats(sums)


class MetricsCallback(TrainerCallback):
    """Appends one JSON line per logging step (loss, lr, grad norm, gate statistics) to metrics.jsonl.

    On resume it first drops lines past the checkpoint's step, so a re-run never duplicates steps.
    Put it first in the callback list: it adds the gate statistics to `logs`, which later reporters
    (wandb) then see too.
    """

    def __init__(self, path: str | Path, objective: Objective):
        self.path = Path(path)
        self.objective = objective

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        atomic_write_jsonl(self.path, [r for r in read_jsonl(self.path) if r.get("step", 0) <= state.global_step])

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs if logs is not None else {}
        if "loss" in logs:  # training logs only; the final summary has train_loss instead
            logs.update(self.objective.pop_stats())
        if state.is_world_process_zero:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

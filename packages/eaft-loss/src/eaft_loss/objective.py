"""Hands a loss of this package to a trainer as one callable, without subclassing the trainer: HF's
`Trainer(compute_loss_func=...)` and TRL's `SFTTrainer(compute_loss_func=...)` call it with the model outputs, the
labels and `num_items_in_batch` (the supervised-token count of the whole gradient-accumulation window, summed over
ranks), which is exactly the denominator the losses need. Depends on torch alone (DeepSpeed only under ZeRO-3).

    objective = Objective("eaft", {"k": 20, "alpha": 1.0, "norm": 3.0}, fused=True)
    objective.attach(model)                      # before the trainer wraps the model
    trainer = Trainer(model=model, ..., compute_loss_func=objective)
    eaft_loss.hf.log_gate_stats(trainer, objective)   # gate statistics in every training log (needs transformers)

Two methods need more than (logits, labels): FLOW a per-sample weight, SFT-KL the frozen base model's logits.
A forward pre-hook on the policy takes `sample_weight` out of the batch before the model sees it and runs the
reference model on the same input, and the loss reads both from `self._extras`. The hook fires on the inner
module, so it works the same under DDP and DeepSpeed.

Fused loss (`fused=True`; in this repository `fused_loss: auto|true|false` in configs/train.yaml, see
`resolve_fused`): the pre-hook also asks the model for its hidden states and to keep no logits position
(`logits_to_keep` = an empty index), so lm_head computes nothing; the loss then runs `LINEAR_LOSSES[method]` on the
last hidden state (transformers ties `hidden_states[-1]` to the final-norm output, lm_head's input) and lm_head's
weight, chunk by chunk, and the full (B, T, V) logits never exist. Tied embeddings: lm_head.weight IS the embedding
Parameter, handed to the loss once, so its gradient is the embedding's plus the head's, as without fusion.
DeepSpeed ZeRO-3: the fused loss runs as lm_head's own forward (the head module is called with the hidden states
and, for that call only, computes the loss), so ZeRO-3's module hooks gather the partitioned weight for the forward,
gather it again for the backward and reduce its gradient as for any layer, tied to the embedding or not. (Gathering
it by hand for the forward alone worked for a tied head only: an untied head's gradient then met its empty local
partition in backward, found by the CPU rehearsal of GLM-4 and Qwen2.5, tests/test_rehearsal.py.)
TRL's SFTTrainer runs a second forward with `fused_lm_head=True` for its own entropy and accuracy metrics; the hook
leaves that call alone.

Gate statistics (`losses.token_stats`) are summed over the micro-batches between two logging steps; `pop_stats`
returns their means (`losses.finalize_stats`), summed over ranks first. `eaft_loss.hf.GateStatsCallback` puts them
in the trainer's logs.

Try it:  python -m pytest tests/test_trainers.py -q      (in the eaft-repro repository: HF Trainer and TRL)
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import torch

from eaft_loss.linear_losses import LINEAR_LOSSES, UNSUPPORTED
from eaft_loss.losses import GATES, LOSSES, finalize_stats, get_loss


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


# Per-batch inputs the hook supplies (FLOW's weights, SFT-KL's reference logits), and the loss's own arguments.
_NOT_HPARAMS = {"tok", "logits", "labels", "num_items_in_batch", "stats", "sample_weights", "ref_logits"}


def check_hparams(method: str, hparams: dict) -> None:
    """Refuse a hyper-parameter the method does not take (a typo would otherwise fail at the first step, or, for a
    gate with **kwargs, never)."""
    fn = GATES.get(method, LOSSES.get(method))
    known = [k for k, p in inspect.signature(fn).parameters.items()
             if k not in _NOT_HPARAMS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise ValueError(f"method {method!r} takes no hyper-parameter {', '.join(map(repr, unknown))}; it takes: "
                         f"{', '.join(known) or 'none'}")


_SAID_ZERO3 = False


def _as_head_forward(head: torch.nn.Module, hidden: torch.Tensor, loss_of_weight) -> torch.Tensor:
    """loss_of_weight(hidden, head.weight). Under ZeRO-3 (a partitioned weight) it is computed as `head`'s forward:
    the module is called with its forward swapped for this one call, so ZeRO-3's hooks on it gather the weight for
    the forward and for the backward and reduce its gradient. Elsewhere it is a plain call (no hook on the head
    sees the loss)."""
    global _SAID_ZERO3
    if not hasattr(head.weight, "ds_id"):
        return loss_of_weight(hidden, head.weight)
    if not _SAID_ZERO3:
        print(f"[objective] fused loss: gathering the ZeRO-3 partitioned head weight {tuple(head.weight.ds_shape)} "
              "through the head module's own hooks for each loss call", flush=True)
        _SAID_ZERO3 = True
    head.forward = lambda h: loss_of_weight(h, head.weight)
    try:
        return head(hidden)
    finally:
        del head.forward  # the class's forward again


class Objective:
    """`compute_loss_func` for a trainer: `objective(outputs, labels, num_items_in_batch)` -> the method's loss.

    method: a name of `losses.LOSSES` (`get_loss`); hparams: its hyper-parameters (e.g. {"k": 20, "alpha": 1.0,
    "norm": 3.0} for EAFT; unknown ones are refused here); ref_model: SFT-KL's frozen base model; fused: compute
    the loss from the last hidden state and the head weight (`linear_losses`), never the full logits (needs
    `attach`); chunk_size: tokens per chunk of the fused loss (default `linear_losses.DEFAULT_CHUNK_SIZE`);
    collect_stats: sum the gate statistics of every training call for `pop_stats`.
    """

    def __init__(self, method: str, hparams: dict | None = None, ref_model: torch.nn.Module | None = None,
                 collect_stats: bool = True, fused: bool = False, chunk_size: int | None = None):
        self.method = method
        self.loss_fn = get_loss(method)
        check_hparams(method, hparams or {})
        if fused and method not in LINEAR_LOSSES:
            raise ValueError(f"fused=True, but method {method!r} has no fused version: "
                             f"{UNSUPPORTED.get(method, 'unknown method')}; use fused=False")
        self.fused = bool(fused)
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
        """Register the forward pre-hook on `model` (before a trainer or DeepSpeed wraps it): it moves per-batch
        extras out of the model's inputs and, when fused, asks for the hidden states instead of the logits."""
        if self.fused:
            reason = fused_unsupported(model)
            if reason:
                raise ValueError(f"the fused loss is on (fused=True; fused_loss=true in this repository's configs) but "
                                 f"{reason}; turn it off (fused=False / fused_loss=false)")
            self._head = model.get_output_embeddings()
        model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module, args, kwargs):
        if kwargs.get("fused_lm_head"):
            # TRL's second, no-grad forward for its own metrics (trl.trainer.utils.add_fused_lm_head): it makes no
            # logits and is not the loss's forward, so it keeps its inputs and leaves this step's extras alone.
            return None
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
            raise ValueError("method=flow but the batch has no sample_weight (B,): the collator must pass each "
                             "sequence's FLOW weight (in this repository: python -m training.precompute ...), and "
                             "the Objective must be attached to the model")
        if self.fused:
            if self._head is None:
                raise ValueError("fused=True needs objective.attach(model) before training: without its hook the "
                                 "model computes the full logits and returns no hidden states")
            hidden = outputs["hidden_states"][-1]  # (B, T, d) after the final norm: lm_head's input
            extras = self._extras

            def fused(h, weight):  # weight (V, d): the embedding Parameter itself when tied
                return LINEAR_LOSSES[self.method](h, weight, labels, num_items_in_batch=num_items_in_batch,
                                                  chunk_size=self.chunk_size, stats=stats, **self.hparams, **extras)

            loss = _as_head_forward(self._head, hidden, fused)
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
        """The gate statistics' means since the last call (`losses.finalize_stats`), over all ranks."""
        sums = dict(self._sums)
        self._sums.clear()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Each rank saw only its share of the batch: add every rank's sums (all ranks log, so all call this).
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, sums)
            sums = {k: sum(r.get(k, 0.0) for r in ranks) for k in set().union(*ranks)}
        return finalize_stats(sums)

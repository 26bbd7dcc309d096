"""Fused-linear losses: the methods of `training.losses` computed from the final hidden states and the LM-head
weight, chunk by chunk, without ever materialising the (tokens x vocabulary) logits.

    LINEAR_LOSSES[name](hidden, lm_head_weight, labels, num_items_in_batch=None, chunk_size=None,
                        stats=None, **hparams) -> scalar fp32 tensor
        hidden (B, T, d): the input of lm_head (after the final norm), unshifted; lm_head_weight (V, d);
        labels (B, T), HF-style.
    equals LOSSES[name](hidden @ lm_head_weight.T, labels, num_items_in_batch, stats=stats, **hparams) in value,
    in the gradients w.r.t. hidden and lm_head_weight, and in the gate statistics written to `stats`.

How. Only the N supervised positions (shifted label != -100) go through the head. For each chunk of C of them:
logits (C, V) = h_c @ W^T in the compute dtype (the weight's, or autocast's), upcast to fp32; log-softmax; the
gate from the *same* gate function the plain path uses (`losses.GATES`, handed a `Tokens` of the chunk); then the
gradient of sum_t w_t CE_t / N w.r.t. the logits, (softmax - onehot) * w_t / N, written over the logits buffer,
and grad_h_c = G @ W, grad_W += G^T @ h_c (fp32 accumulator). The autograd Function returns these saved
gradients in its backward (scaled by the incoming gradient), so nothing of size N x V is ever kept: the extra peak
memory is about two fp32 (C, V) buffers plus the fp32 (V, d) weight-gradient accumulator, whatever N is.
Gates are detached, exactly as in `losses.weighted_ce`, so d loss / d logits = w_t * d CE_t / d logits.
Under torch.no_grad (evaluation) only the loss and statistics are computed: one matmul per chunk instead of three.

Coverage, by what the gate needs:
    token  (sft, eaft, eaft_sig, dft, flow, masked_sft with given thresholds): the chunk's own tokens: one pass.
    mean   (mile): w / mean(w) over the batch. Loss, gradients and gate sums are linear in w, so one pass with the
           unnormalised weight (`losses.mile_weight`) and a division by the batch mean at the end is exact.
    prepass (talr without tau: the batch median of CE; masked_sft without thresholds: the batch q-quantiles of
           H_topk and p): a forward-only chunked pass collects the N per-token values first (N floats), and the
           statistic goes to the gate as the hparam it already accepts (tau, entropy_threshold, prob_threshold).
           Costs one more (N x d x V) matmul: about 4/3 of the single-pass time.
    not covered: sft_kl. Its KL term needs the frozen reference model's full logits (B, T, V): a fused version
           would have to take the reference hidden states and head too. Training with it and fused_loss=true is
           an error (see `training.objective`).

Chunk size. DEFAULT_CHUNK_SIZE = 512 tokens, from `python -m training.bench --chunk-sweep` at the Qwen3-4B head
(d 2560, V 151,936, fp32, 2 CPU threads; results/bench/loss_kernels.md). Process CPU time at N = 2,048 relative
to plain CE with full logits: chunk 256 1.18x, 512 1.03x, 1024 1.02x; peak extra memory 1.91, 2.23, 2.84 GB
(plain CE 3.74 GB). Small chunks lose because every chunk reads W twice and reads and writes the fp32 (V, d)
weight-gradient accumulator (6.2 GB of traffic per chunk here) and because the grad_W matmul has inner size C;
512 is the smallest chunk that is within a few % of plain CE, and its two (C, V) buffers are 2 x 512 x 151,936
x 4 B = 0.62 GB, against 2.5 GB for ONE fp32 copy of the logits of 4,096 tokens. Not measured on a GPU: there
the fixed per-chunk cost is also ~6.2 GB of memory traffic (bf16 W twice, the fp32 accumulator, the bf16 block
products: ~2 ms on an H100) against 1.2 TFLOP of matmuls per 512-token chunk (~2 ms), so larger chunks
(2,048-4,096) are likely faster there; run the same sweep on the GPU and set `fused_chunk_size`.

Try it:  python -c "import torch; from training.linear_losses import LINEAR_LOSSES; \
          print(LINEAR_LOSSES['eaft'](torch.randn(2, 5, 16), torch.randn(50, 16), torch.randint(0, 50, (2, 5))))"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from training.losses import GATES, IGNORE_INDEX, Tokens, _quantile, mile_weight, token_sums, topk_entropy

DEFAULT_CHUNK_SIZE = 512
# Low-precision weight gradients are added to the fp32 accumulator in vocabulary blocks of this many rows, so the
# temporary product is (block x d), not a second (V x d).
VOCAB_BLOCK = 16384

# Why a method has no fused version; `training.objective` turns this into the error message.
UNSUPPORTED = {
    "sft_kl": "its KL term needs the frozen reference model's full logits (B, T, V), which a fused loss exists "
              "to avoid; a fused SFT-KL would take the reference hidden states and head as well",
}


def _defaults(fn: Callable) -> dict:
    """The keyword defaults of a gate function, so the prepass reads k, q, mode where the gate defines them."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


# ---------------------------------------------------------------------------------------------------------
# One chunk.


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype lm_head's matmul would run in: autocast's when it is on, else the weight's."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


def _chunk_tokens(hc: torch.Tensor, w_cd: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> Tokens:
    """The chunk's supervised tokens, computed exactly as `losses.supervised_tokens` would from the logits.

    hc (c, d) in the compute dtype, w_cd (V, d) likewise -> logits (c, V) fp32 and logp (c, V) fp32."""
    logits = hc @ w_cd.t()  # (c, V) in the compute dtype, rounded there as lm_head's output would be
    if logits.dtype != torch.float32:
        logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return Tokens(logits=logits, targets=targets, rows=rows, logp=logp, ce=ce)


def _accumulate_grad_weight(grad_w: torch.Tensor, grad_logits: torch.Tensor, hc: torch.Tensor, first: bool) -> None:
    """grad_w (V, d) fp32 += grad_logits^T (V, c) @ hc (c, d); the first chunk writes instead (no zero-fill)."""
    if grad_logits.dtype == torch.float32:
        if first:
            torch.mm(grad_logits.t(), hc, out=grad_w)
        else:
            grad_w.addmm_(grad_logits.t(), hc)
        return
    # bf16/fp16: the product runs in the low precision, as lm_head's own backward would, and each block of it is
    # added to the fp32 accumulator, so sums over chunks do not round in bf16.
    for v0 in range(0, grad_w.shape[0], VOCAB_BLOCK):
        block = grad_logits[:, v0:v0 + VOCAB_BLOCK].t() @ hc
        if first:
            grad_w[v0:v0 + VOCAB_BLOCK].copy_(block)
        else:
            grad_w[v0:v0 + VOCAB_BLOCK].add_(block)


def _add_sums(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


# ---------------------------------------------------------------------------------------------------------
# The chunked pass: loss and both gradients at once.


@torch.no_grad()
def _fused_pass(h: torch.Tensor, weight: torch.Tensor, *, targets: torch.Tensor, rows: torch.Tensor,
                gate_fn: Callable, hparams: dict, scale, chunk: int, mean_normalised: bool,
                sums: dict | None, with_grad: bool = True) -> tuple:
    """h (N, d), weight (V, d) -> (loss, grad_h (N, d), grad_w (V, d)). `scale` = 1 / N (float or 0-dim).

    with_grad=False (evaluation, no_grad): loss and statistics only, grads None, a third of the matmuls."""
    n, d = h.shape
    cd = _compute_dtype(h, weight)
    grad_h = grad_w = None
    with torch.autocast(h.device.type, enabled=False):
        w_cd = weight.to(cd)  # a no-op unless autocast casts the head, as it would for lm_head
        if with_grad:
            grad_h = torch.empty(n, d, dtype=h.dtype, device=h.device)
            # Written by the first chunk; zeros only when there is no chunk (an all-ignored batch).
            grad_w = (torch.zeros if n == 0 else torch.empty)(weight.shape, dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        gate_total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, n, chunk):
            hc = h[s:s + chunk].to(cd)  # (c, d)
            t = targets[s:s + chunk]
            tok = _chunk_tokens(hc, w_cd, t, rows[s:s + chunk])
            gate = gate_fn(tok, **hparams)  # (c,) detached, or None for plain CE
            w = torch.ones_like(tok.ce) if gate is None else gate.detach().float()
            total += (w * tok.ce).sum()
            gate_total += w.sum()
            # The raw logits are not needed any more: their buffer becomes the softmax, then the gradient.
            probs = torch.exp(tok.logp, out=tok.logits)  # (c, V)
            if sums is not None:
                # Full-vocabulary entropy as a batched dot product: no third (c, V) temporary.
                entropy = -torch.bmm(probs.unsqueeze(1), tok.logp.unsqueeze(2)).view(-1)
                _add_sums(sums, token_sums(tok, gate, entropy))
            del tok, gate
            if not with_grad:
                continue
            # d loss / d logits = w_t / N * (softmax - onehot(y_t)), in place
            coef = w * scale  # (c,)
            probs.mul_(coef.unsqueeze(1))
            probs[torch.arange(t.numel(), device=t.device), t] -= coef
            grad_logits = probs if cd == torch.float32 else probs.to(cd)
            del probs
            grad_h[s:s + chunk] = grad_logits @ w_cd  # (c, d)
            _accumulate_grad_weight(grad_w, grad_logits, hc, first=s == 0)
            del grad_logits
        loss = total * scale
        if mean_normalised and n:
            # gate = w / mean(w): loss, gradients and gate sums are linear in the gate
            inv_mean = n / gate_total
            loss = loss * inv_mean
            if with_grad:
                grad_h.mul_(inv_mean.to(grad_h.dtype))
                grad_w.mul_(inv_mean)
            if sums is not None:
                for k in ("gate_sum", "conflict_gate_sum"):
                    sums[k] = sums[k] * inv_mean
    return loss, grad_h, None if grad_w is None else grad_w.to(weight.dtype)


class _FusedGatedCE(torch.autograd.Function):
    """Loss and both gradients are computed in the forward, chunk by chunk; backward only scales them."""

    @staticmethod
    def forward(ctx, h, weight, run):
        loss, grad_h, grad_w = run(h, weight)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        # The Trainer's backward passes 1: skip two full-size multiplications then. Otherwise (loss scaling,
        # a loss used inside a larger expression) scale out of place, so the saved tensors stay valid.
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):
            grad_h, grad_w = grad_h * grad_loss, grad_w * grad_loss
        return grad_h, grad_w, None


# ---------------------------------------------------------------------------------------------------------
# Batch statistics that some gates need before any chunk can be weighted.


@torch.no_grad()
def _prepass_hparams(name: str, hparams: dict, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     rows: torch.Tensor, chunk: int) -> dict:
    """talr's tau and masked_sft's thresholds, computed over the whole batch chunk by chunk, when not given."""
    hp = {**_defaults(GATES[name]), **hparams}
    need_tau = name == "talr" and hp.get("tau") is None
    need_h = name == "masked_sft" and hp.get("entropy_threshold") is None
    need_p = name == "masked_sft" and hp.get("mode") == "entropy_and_prob" and hp.get("prob_threshold") is None
    if not (need_tau or need_h or need_p) or h.shape[0] == 0:
        return hparams
    cd = _compute_dtype(h, weight)
    ces, ents = [], []
    with torch.autocast(h.device.type, enabled=False):
        w_cd = weight.to(cd)
        for s in range(0, h.shape[0], chunk):
            tok = _chunk_tokens(h[s:s + chunk].to(cd), w_cd, targets[s:s + chunk], rows[s:s + chunk])
            ces.append(tok.ce)
            if need_h:
                ents.append(topk_entropy(tok.logits, hp["k"]))
            del tok
    out = dict(hparams)
    if need_tau:
        out["tau"] = torch.cat(ces).median().item()  # the same median talr_gate takes over the batch
    if need_h:
        out["entropy_threshold"] = _quantile(torch.cat(ents), hp["q"]).item()
    if need_p:
        out["prob_threshold"] = _quantile(torch.exp(-torch.cat(ces)), hp["q"]).item()
    return out


# ---------------------------------------------------------------------------------------------------------
# The losses.


def linear_weighted_ce(name: str, hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch=None, chunk_size: int | None = None, stats: dict | None = None,
                       **hparams) -> torch.Tensor:
    """sum_t gate_t * CE_t / N over the supervised tokens of `hidden @ lm_head_weight.T`, chunk by chunk."""
    if name not in GATES:
        raise KeyError(f"no fused version of method {name!r}: {UNSUPPORTED.get(name, 'unknown method')}")
    if (hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape or lm_head_weight.dim() != 2
            or lm_head_weight.shape[1] != hidden.shape[-1]):
        raise ValueError(f"expected hidden (B, T, d), lm_head_weight (V, d), labels (B, T); got "
                         f"{tuple(hidden.shape)}, {tuple(lm_head_weight.shape)}, {tuple(labels.shape)}")
    chunk = int(chunk_size or DEFAULT_CHUNK_SIZE)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # Shift and keep the supervised positions before the head: only N x d values go through it.
    shift_labels = labels[:, 1:].to(hidden.device)
    mask = shift_labels != IGNORE_INDEX  # (B, T-1)
    rows = torch.arange(labels.shape[0], device=hidden.device).unsqueeze(1).expand_as(mask)[mask]
    h = hidden[:, :-1][mask]  # (N, d); its backward scatters grad_h back into (B, T, d)
    targets = shift_labels[mask]
    n = targets.numel()

    denom = num_items_in_batch if num_items_in_batch is not None else n
    if torch.is_tensor(denom):
        denom = denom.to(hidden.device, torch.float32)
    # An empty batch gives 0 with zero gradients (a live graph, no NaN), as losses.reduce_loss does.
    scale = 0.0 if n == 0 else 1.0 / denom

    mean_normalised = name == "mile"
    gate_fn = mile_weight if mean_normalised else GATES[name]
    hparams = _prepass_hparams(name, hparams, h.detach(), lm_head_weight.detach(), targets, rows, chunk)
    sums = {} if stats is not None else None
    run = partial(_fused_pass, targets=targets, rows=rows, gate_fn=gate_fn, hparams=hparams, scale=scale,
                  chunk=chunk, mean_normalised=mean_normalised, sums=sums)
    if torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad):
        loss = _FusedGatedCE.apply(h, lm_head_weight, run)
    else:  # evaluation: nothing will call backward, so compute no gradient
        loss = run(h, lm_head_weight, with_grad=False)[0]
    if stats is not None:
        stats.update({k: float(v) for k, v in sums.items()} if n else {"n_tokens": 0.0})
    return loss


def _linear(name: str) -> Callable:
    def loss(hidden, lm_head_weight, labels, num_items_in_batch=None, chunk_size=None, stats=None, **hparams):
        return linear_weighted_ce(name, hidden, lm_head_weight, labels, num_items_in_batch, chunk_size, stats,
                                  **hparams)

    loss.__name__ = f"linear_{name}_loss"
    loss.__doc__ = f"Fused-linear `{name}`: LOSSES['{name}'](hidden @ lm_head_weight.T, ...) without the logits."
    return loss


LINEAR_LOSSES: dict[str, Callable] = {name: _linear(name) for name in GATES}

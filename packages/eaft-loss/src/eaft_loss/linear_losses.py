"""Fused-linear losses: the methods of `eaft_loss.losses` computed from the final hidden states and the LM-head
weight, chunk by chunk, without ever materialising the (tokens x vocabulary) logits.

    LINEAR_LOSSES[name](hidden, lm_head_weight, labels, num_items_in_batch=None, chunk_size=None,
                        stats=None, **hparams) -> scalar fp32 tensor
        hidden (B, T, d): the input of lm_head (after the final norm), unshifted; lm_head_weight (V, d);
        labels (B, T), HF-style.
    equals LOSSES[name](hidden @ lm_head_weight.T, labels, num_items_in_batch, stats=stats, **hparams) in value,
    in the gradients w.r.t. hidden and lm_head_weight, and in the gate statistics written to `stats`.

How. Everything per token is `eaft_loss.losses`' own pipeline; this file only adds the chunking. Only the N
supervised positions (`losses.supervised_positions`) go through the head.
    First pass, only when the gate declares batch statistics it was not given (`losses.needs`: TALR's median CE,
    Masked SFT's batch quantiles, MiLe's mean weight): forward-only, chunk by chunk, it collects each statistic's
    per-token values (N floats) and reduces them, exactly as `losses.with_batch_stats` does over the whole batch.
    Main pass, for each chunk of C tokens: logits (C, V) = h_c @ W^T in the compute dtype (the weight's, or
    autocast's); `losses.tokens_from_logits`; the gate (`losses.GATES`, with the statistics); `losses.gated_ce`
    summed and divided by `losses.denominator`; its gradient w.r.t. the logits by `losses.gated_ce_grad_` (the
    closed form, written over the logits' buffer), then grad_h_c = G @ W and grad_W += G^T @ h_c (fp32
    accumulator). The autograd Function returns these saved gradients in its backward (scaled by the incoming
    gradient), so nothing of size N x V is ever kept: the extra peak memory is about two fp32 (C, V) buffers
    plus the fp32 (V, d) weight-gradient accumulator, whatever N is. Autograd per chunk was measured and
    rejected: it keeps three more (C, V) buffers (1 GB more at the Qwen3-4B head, more than plain CE at N = 1,024).
    Under torch.no_grad (evaluation) only the loss and statistics are computed: one matmul per chunk, not three.
    Guard: a gate whose weights depend on other tokens through something it does not declare would silently be
    computed per chunk. On the first chunk, the gate is also run on each half alone; different weights are an
    error that names the gate.
    Cost: the first pass is one more (N x d x V) matmul, about 4/3 of the single-pass time (talr, mile and
    masked_sft without precomputed thresholds).
    Not covered: sft_kl. Its KL term needs the frozen reference model's full logits (B, T, V): a fused version
    would have to take the reference hidden states and head too. Training with it and fused_loss=true is an error
    (see `eaft_loss.objective`).

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

Try it:  python -c "import torch; from eaft_loss import get_linear_loss; \
          print(get_linear_loss('eaft')(torch.randn(2, 5, 16), torch.randn(50, 16), torch.randint(0, 50, (2, 5))))"
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from eaft_loss.losses import (
    GATES,
    Tokens,
    denominator,
    gate_hparams,
    gated_ce,
    gated_ce_grad_,
    missing_batch_stats,
    supervised_positions,
    token_sums,
    tokens_from_logits,
)

DEFAULT_CHUNK_SIZE = 512
# Low-precision weight gradients are added to the fp32 accumulator in vocabulary blocks of this many rows, so the
# temporary product is (block x d), not a second (V x d).
VOCAB_BLOCK = 16384

# Why a method has no fused version; `eaft_loss.objective` turns this into the error message.
UNSUPPORTED = {
    "sft_kl": "its KL term needs the frozen reference model's full logits (B, T, V), which a fused loss exists "
              "to avoid; a fused SFT-KL would take the reference hidden states and head as well",
}


# ---------------------------------------------------------------------------------------------------------
# One chunk.


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype lm_head's matmul would run in: autocast's when it is on, else the weight's."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


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


@torch.no_grad()
def _check_per_token(name: str, gate_fn: Callable, tok: Tokens, gate: torch.Tensor | None, hparams: dict) -> None:
    """Refuse a gate whose weights depend on other tokens in a way it does not declare: gated per chunk, it would
    silently differ from the plain path. Its weights on a chunk must equal its weights on each half alone (NaN
    matching NaN: a diverging run is the divergence guard's to report, not this check's)."""
    n = tok.ce.numel()
    if gate is None or n < 2:
        return
    halves = torch.cat([gate_fn(tok[:n // 2], **hparams), gate_fn(tok[n // 2:], **hparams)])
    if not torch.allclose(halves.float(), gate.float(), rtol=1e-4, atol=1e-6, equal_nan=True):
        raise ValueError(
            f"the {name!r} gate weighs a token by other tokens of the batch through something it does not declare, "
            "so the fused loss would compute it per chunk: declare that batch statistic on the gate with "
            "eaft_loss.losses.needs(BatchStat(...)) (as talr_gate does), or train with fused_loss=false")


def _add_sums(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


# ---------------------------------------------------------------------------------------------------------
# The two passes.


@torch.no_grad()
def _with_batch_stats(gate_fn: Callable, hparams: dict, h: torch.Tensor, weight: torch.Tensor,
                      targets: torch.Tensor, rows: torch.Tensor, chunk: int) -> dict:
    """`losses.with_batch_stats` over all N tokens, chunk by chunk: the declared statistics the caller did not pass."""
    missing = missing_batch_stats(gate_fn, hparams)
    if not missing or h.shape[0] == 0:
        return hparams
    hp = gate_hparams(gate_fn, hparams)
    values = {s.hparam: [] for s in missing}
    cd = _compute_dtype(h, weight)
    with torch.autocast(h.device.type, enabled=False):
        w_cd = weight.to(cd)
        for s0 in range(0, h.shape[0], chunk):
            tok = tokens_from_logits(h[s0:s0 + chunk].to(cd) @ w_cd.t(), targets[s0:s0 + chunk], rows[s0:s0 + chunk])
            for s in missing:
                values[s.hparam].append(s.values(tok, hp))
            del tok
    return {**hparams, **{s.hparam: s.reduce(torch.cat(values[s.hparam]), hp) for s in missing}}


@torch.no_grad()
def _fused_pass(h: torch.Tensor, weight: torch.Tensor, *, name: str, targets: torch.Tensor, rows: torch.Tensor,
                hparams: dict, denom, chunk: int, sums: dict | None, with_grad: bool = True) -> tuple:
    """h (N, d), weight (V, d) -> (loss, grad_h (N, d), grad_w (V, d)); `hparams` hold the batch statistics.

    with_grad=False (evaluation, no_grad): loss and statistics only, grads None, a third of the matmuls."""
    n, d = h.shape
    gate_fn = GATES[name]
    cd = _compute_dtype(h, weight)
    grad_h = grad_w = None
    with torch.autocast(h.device.type, enabled=False):
        w_cd = weight.to(cd)  # a no-op unless autocast casts the head, as it would for lm_head
        if with_grad:
            grad_h = torch.empty(n, d, dtype=h.dtype, device=h.device)
            # Written by the first chunk; zeros only when there is no chunk (an all-ignored batch).
            grad_w = (torch.zeros if n == 0 else torch.empty)(weight.shape, dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, n, chunk):
            hc = h[s:s + chunk].to(cd)  # (c, d)
            # (c, V): rounded to the compute dtype as lm_head's output is, then upcast
            tok = tokens_from_logits(hc @ w_cd.t(), targets[s:s + chunk], rows[s:s + chunk])
            gate = gate_fn(tok, **hparams)  # (c,) detached, or None for plain CE
            if s == 0:
                _check_per_token(name, gate_fn, tok, gate, hparams)
            total += gated_ce(tok, gate).sum()
            # The raw logits are not needed any more: their buffer becomes the softmax, then the gradient.
            probs = torch.exp(tok.logp, out=tok.logits)  # (c, V)
            if sums is not None:
                # Full-vocabulary entropy as a batched dot product: no third (c, V) temporary.
                entropy = -torch.bmm(probs.unsqueeze(1), tok.logp.unsqueeze(2)).view(-1)
                _add_sums(sums, token_sums(tok, gate, entropy))
            if with_grad:
                grad_logits = gated_ce_grad_(probs, tok.targets, gate, 1.0 / denom)  # (c, V), over probs
                del tok, gate, probs
                grad_logits = grad_logits if cd == torch.float32 else grad_logits.to(cd)
                grad_h[s:s + chunk] = grad_logits @ w_cd  # (c, d)
                _accumulate_grad_weight(grad_w, grad_logits, hc, first=s == 0)
                del grad_logits
    loss = total / denom if n else total
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
    # Keep the supervised positions before the head: only N x d values go through it.
    mask, targets, rows = supervised_positions(labels, hidden.device)
    h = hidden[:, :-1][mask]  # (N, d); its backward scatters grad_h back into (B, T, d)
    n = targets.numel()
    hparams = _with_batch_stats(GATES[name], hparams, h.detach(), lm_head_weight.detach(), targets, rows, chunk)
    sums = {} if stats is not None else None
    run = partial(_fused_pass, name=name, targets=targets, rows=rows, hparams=hparams,
                  denom=denominator(num_items_in_batch, n, hidden.device), chunk=chunk, sums=sums)
    # An empty batch runs no chunk: 0 with zero gradients (a live graph, no NaN), as losses.reduce_loss gives.
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


def get_linear_loss(name: str) -> Callable:
    """LINEAR_LOSSES[name], with an error that says why a method has no fused version or lists the valid names."""
    if name not in LINEAR_LOSSES:
        why = UNSUPPORTED.get(name, f"unknown method; fused methods: {', '.join(sorted(LINEAR_LOSSES))}")
        raise KeyError(f"no fused version of method {name!r}: {why}")
    return LINEAR_LOSSES[name]

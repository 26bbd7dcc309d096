"""Every training objective of the paper, as small pure functions over per-token tensors. Depends on torch alone.

Each method is a *gate*: a per-token weight w_t that multiplies the token's cross-entropy,

    L = sum_t w_t * CE_t / N            (N = num_items_in_batch, else the supervised-token count)

and one shared per-token pipeline does the rest, for the plain path here (`weighted_ce`, from the logits) and the
fused chunked path (eaft_loss.linear_losses, from the hidden states and the head weight) alike:

    supervised_positions   shift (position t predicts label t+1), drop ignored labels (-100)
    tokens_from_logits     upcast to fp32, log-softmax, per-token CE                  -> Tokens
    with_batch_stats       the batch statistics the gate declares (`needs`), unless passed in
    gate_fn(tok, **hp)     the method: (N,) weights, detached, or None for plain CE
    gated_ce               w_t * CE_t, the only place the gate meets the loss (`gated_ce_grad_`: its gradient)
    denominator            num_items_in_batch, else N
    token_sums             the logged gate statistics, as sums

Gates are detached, so d L / d logits = w_t * d CE_t / d logits.

    LOSSES[name](logits, labels, num_items_in_batch=None, stats=None, **hparams) -> scalar fp32 tensor
        logits (B, T, V), labels (B, T): HF-style, unshifted. `stats`, a dict, receives `token_stats` sums.

Paper map (arXiv 2601.02151; docs/paper.md "Method" and "Baselines"):
    Eq. 5-6    EAFT: w = (H_topK / norm) ** alpha, K = 20                 eaft_gate, normalised_topk_entropy
               (norm = ln K; the authors' code divides by 3.0; alpha = 2, 3 are EAFT^2, EAFT^3 of Sec. 5.1)
    Sec. 5.1   EAFT_sig: w = sigmoid(a * (H~ - b)), a = 30, b = 0.17       eaft_sig_gate
    Eq. 4      Masked SFT: w = 1[H_topK > tau_q]                           masked_sft_gate(mode="entropy")
    Sec. 3.2   pilot mask: drop H_topK <= tau_q AND p <= pi_q              masked_sft_gate(mode="entropy_and_prob")
    Sec. 3     confident conflict: low entropy and low p                   CONFLICT_MAX_*, token_sums
    Fig. 6     top-K entropy against the full entropy                      topk_entropy, full_entropy
    Table 1    baselines SFT, DFT, TALR, FLOW, SFT-KL                     sft_gate, dft_gate, talr_gate, flow_gate,
               (definitions from their own papers: docs/paper.md "Baselines")   sft_kl_loss
    (ours)     MiLe, not in the paper: an entropy-weighted baseline           mile_gate
    code       sum_t w_t CE_t / N, N over the whole GA window, gate detached   denominator, gated_ce
               (the authors' released loss, not stated in the paper text)

Adding a method: write a gate `(Tokens, **hparams) -> (N,) weights`, add it to GATES and write
(in this repository) configs/method/<name>.yaml; the parity tests pick it up from GATES. If it reads anything computed over the whole
batch (a median, a quantile, a mean), declare it with `@needs(BatchStat(...))` (see talr_gate), or the fused path
refuses it (it would otherwise compute it per chunk).

Try it:  python -c "import torch; from eaft_loss import get_loss; \
          print(get_loss('eaft')(torch.randn(2, 5, 50), torch.randint(0, 50, (2, 5))))"
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# A "confident conflict" (paper Sec. 3): the model is sure (low entropy) and sure of something else (low p).
# Thresholds are ours [U]; full-vocabulary entropy in nats. Fig. 4's token groups use the paper's 2.0 / 0.5.
CONFLICT_MAX_ENTROPY = 0.5
CONFLICT_MAX_PROB = 0.1
HIGH_ENTROPY_MIN = 2.0
LOW_ENTROPY_MAX = 0.5


# ---------------------------------------------------------------------------------------------------------
# The per-token pipeline, shared by the plain and the fused path.


@dataclass
class Tokens:
    """The supervised tokens of a batch (or of one chunk of them), flattened. N = number of tokens."""

    logits: torch.Tensor  # (N, V) fp32, next-token logits at supervised positions; carries the graph
    targets: torch.Tensor  # (N,) label ids
    rows: torch.Tensor  # (N,) index of the sequence each token came from, for per-sample inputs
    logp: torch.Tensor  # (N, V) fp32 log-softmax, carries the graph
    ce: torch.Tensor  # (N,) per-token cross-entropy, carries the graph

    @property
    def prob(self) -> torch.Tensor:
        """(N,) probability of the label, detached."""
        return torch.exp(-self.ce.detach())

    def __getitem__(self, index) -> Tokens:
        """A subset of the tokens (a slice or an index tensor)."""
        return Tokens(self.logits[index], self.targets[index], self.rows[index], self.logp[index], self.ce[index])


def supervised_positions(labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels (B, T) -> mask (B, T-1) of the positions t whose label t+1 is supervised, targets (N,), rows (N,)."""
    shift_labels = labels[:, 1:].to(device)
    mask = shift_labels != IGNORE_INDEX
    rows = torch.arange(labels.shape[0], device=device).unsqueeze(1).expand_as(mask)[mask]
    return mask, shift_labels[mask], rows


def tokens_from_logits(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> Tokens:
    """logits (N, V) at supervised positions, any float dtype -> Tokens, in fp32."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return Tokens(logits=logits, targets=targets, rows=rows, logp=logp, ce=ce)


def supervised_tokens(logits: torch.Tensor, labels: torch.Tensor) -> Tokens:
    """logits (B, T, V), labels (B, T) -> the supervised next-token predictions, in fp32."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    mask, targets, rows = supervised_positions(labels, logits.device)
    # Select before upcasting: only N x V fp32 values are ever made, never B x T x V.
    return tokens_from_logits(logits[:, :-1, :][mask], targets, rows)


def gated_ce(tok: Tokens, gate: torch.Tensor | None) -> torch.Tensor:
    """(N,) per-token loss w_t * CE_t, the gate detached (None: plain CE): the only place the gate meets the loss."""
    return tok.ce if gate is None else gate.detach() * tok.ce


@torch.no_grad()
def gated_ce_grad_(probs: torch.Tensor, targets: torch.Tensor, gate: torch.Tensor | None, scale) -> torch.Tensor:
    """The gradient of scale * sum_t gated_ce_t w.r.t. the logits, scale * w_t * (softmax_t - onehot(y_t)), written
    over `probs` (N, V), the softmax. Closed form, for the fused path, which cannot keep an autograd graph of
    (N, V); tests check it against autograd of `gated_ce` for every gate, so the two cannot drift apart."""
    coef = scale * (torch.ones_like(targets, dtype=probs.dtype) if gate is None else gate.detach().to(probs.dtype))
    probs.mul_(coef.unsqueeze(1))
    probs[torch.arange(targets.numel(), device=targets.device), targets] -= coef
    return probs


def denominator(num_items_in_batch, n_tokens: int, device):
    """The N that the summed token losses are divided by: num_items_in_batch, else this batch's token count."""
    denom = num_items_in_batch if num_items_in_batch is not None else n_tokens
    return denom.to(device, torch.float32) if torch.is_tensor(denom) else denom


def reduce_loss(token_losses: torch.Tensor, logits: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """sum(token_losses) / N. An empty batch gives 0 that still reaches the logits (no NaN, no dead graph)."""
    if token_losses.numel() == 0:
        return logits.sum() * 0.0
    return token_losses.sum() / denominator(num_items_in_batch, token_losses.numel(), token_losses.device)


# ---------------------------------------------------------------------------------------------------------
# Batch statistics: what a gate needs from all the batch's tokens before it can weight any one of them.


@dataclass(frozen=True)
class BatchStat:
    """A number over ALL the supervised tokens of a batch that a gate reads (a median, a quantile, a mean).

    It reaches the gate as the keyword `hparam`; a caller that passes that keyword (e.g. thresholds precomputed
    over the data set) skips it. Computed one way on both paths: `values` per token, then `reduce` over all N of
    them. The fused path gathers the values chunk by chunk in a first pass (N floats, never the (N, V) logits).
    `hp` is the gate's keyword defaults updated with the caller's hyper-parameters."""

    hparam: str
    values: Callable[[Tokens, dict], torch.Tensor]  # (Tokens, hp) -> (N,), detached
    reduce: Callable[[torch.Tensor, dict], torch.Tensor]  # ((N,) values of the whole batch, hp) -> 0-dim
    used: Callable[[dict], bool] = lambda hp: True  # whether these hyper-parameters read it at all

    def of(self, tok: Tokens, hp: dict) -> torch.Tensor:
        return self.reduce(self.values(tok, hp), hp)


def needs(*stats: BatchStat) -> Callable:
    """Declare the batch statistics a gate reads. The fused path computes exactly these in its first pass and
    refuses a gate whose weights depend on other tokens in any undeclared way."""
    def declare(gate_fn: Callable) -> Callable:
        gate_fn.batch_stats = stats
        return gate_fn
    return declare


def gate_hparams(gate_fn: Callable, hparams: dict) -> dict:
    """The gate's keyword defaults, updated with `hparams`: what the gate will run with."""
    defaults = {k: p.default for k, p in inspect.signature(gate_fn).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **hparams}


def missing_batch_stats(gate_fn: Callable, hparams: dict) -> list[BatchStat]:
    """The declared statistics these hyper-parameters use and the caller did not pass."""
    hp = gate_hparams(gate_fn, hparams)
    return [s for s in getattr(gate_fn, "batch_stats", ()) if s.used(hp) and hp.get(s.hparam) is None]


def with_batch_stats(gate_fn: Callable, tok: Tokens, hparams: dict) -> dict:
    """`hparams` plus every missing declared statistic, computed over `tok` (the whole batch)."""
    hp = gate_hparams(gate_fn, hparams)
    return {**hparams, **{s.hparam: s.of(tok, hp) for s in missing_batch_stats(gate_fn, hparams)}}


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The lower empirical q-quantile. torch.quantile refuses more than 2**24 elements; kthvalue has no limit."""
    idx = max(1, min(x.numel(), math.ceil(q * x.numel())))
    return x.kthvalue(idx).values


# ---------------------------------------------------------------------------------------------------------
# Token quantities, all detached.


@torch.no_grad()
def topk_entropy(logits: torch.Tensor, k: int = 20) -> torch.Tensor:
    """(N, V) -> (N,) entropy (nats) of the softmax renormalised over the top-k logits (authors' code)."""
    top = torch.topk(logits.float(), min(k, logits.shape[-1]), dim=-1).values
    logq = F.log_softmax(top, dim=-1)
    return -(logq.exp() * logq).sum(-1)


@torch.no_grad()
def full_entropy(logp: torch.Tensor) -> torch.Tensor:
    """(N, V) log-probabilities -> (N,) entropy in nats over the whole vocabulary."""
    return -(logp.exp() * logp).sum(-1)


def normalised_topk_entropy(tok: Tokens, k: int = 20, norm: float | None = None) -> torch.Tensor:
    """H~ = H_topk / norm, norm = ln k unless given (the authors' code uses 3.0 for k = 20)."""
    return topk_entropy(tok.logits, k) / (math.log(k) if norm is None else norm)


# ---------------------------------------------------------------------------------------------------------
# Gates: (Tokens, **hparams) -> (N,) detached weights, or None for plain CE.


def sft_gate(tok: Tokens) -> None:
    return None


def eaft_gate(tok: Tokens, k: int = 20, alpha: float = 1.0, norm: float | None = None) -> torch.Tensor:
    """EAFT: (H_topk / norm) ** alpha. alpha = 2, 3 are the paper's EAFT^2, EAFT^3."""
    return normalised_topk_entropy(tok, k, norm) ** alpha


def eaft_sig_gate(tok: Tokens, k: int = 20, a: float = 30.0, b: float = 0.17,
                  norm: float | None = None) -> torch.Tensor:
    """EAFT_sig: sigmoid(a * (H~ - b)); b = 0.17 sits at the 15th entropy percentile in the paper."""
    return torch.sigmoid(a * (normalised_topk_entropy(tok, k, norm) - b))


ENTROPY_QUANTILE = BatchStat("entropy_threshold", values=lambda tok, hp: topk_entropy(tok.logits, hp["k"]),
                             reduce=lambda x, hp: _quantile(x, hp["q"]))
PROB_QUANTILE = BatchStat("prob_threshold", values=lambda tok, hp: tok.prob, reduce=lambda x, hp: _quantile(x, hp["q"]),
                          used=lambda hp: hp["mode"] == "entropy_and_prob")


@needs(ENTROPY_QUANTILE, PROB_QUANTILE)
@torch.no_grad()
def masked_sft_gate(tok: Tokens, mode: str = "entropy", q: float = 0.15, k: int = 20,
                    entropy_threshold: float | None = None, prob_threshold: float | None = None) -> torch.Tensor:
    """Masked SFT: hard 0/1 gate on the top-k entropy H_topk (nats) and the label probability p.

    mode="entropy"          Eq. 4: drop tokens with H_topk <= tau_q (the q lowest-entropy tokens).
    mode="entropy_and_prob" Sec. 3.2 pilot: drop tokens with H_topk <= tau_q AND p <= pi_q.
    Thresholds: passed in (computed once over the training set under the base model by
    `python -m training.precompute`, the reading the paper's beta = 0.17 suggests), or, when None, the
    q-quantiles of this batch's supervised tokens.
    """
    hp = {"q": q, "k": k, "mode": mode}
    h = topk_entropy(tok.logits, k)
    drop = h <= (entropy_threshold if entropy_threshold is not None else ENTROPY_QUANTILE.of(tok, hp))
    if mode == "entropy_and_prob":
        drop &= tok.prob <= (prob_threshold if prob_threshold is not None else PROB_QUANTILE.of(tok, hp))
    elif mode != "entropy":
        raise ValueError(f"masked_sft mode must be 'entropy' or 'entropy_and_prob', got {mode!r}")
    return (~drop).float()


def dft_gate(tok: Tokens) -> torch.Tensor:
    """DFT (Wu et al. 2025): CE * sg(p)."""
    return tok.prob


CE_MEDIAN = BatchStat("tau", values=lambda tok, hp: tok.ce.detach(), reduce=lambda x, hp: x.median())


@needs(CE_MEDIAN)
def talr_gate(tok: Tokens, tau: float | None = None) -> torch.Tensor:
    """TALR (Lin et al. 2025): sg(p) ** (1 / tau), tau = median per-token CE of this (micro-)batch."""
    ce = tok.ce.detach()
    t = torch.as_tensor(tau if tau is not None else CE_MEDIAN.of(tok, {}), device=ce.device)
    return torch.exp(-ce / t.clamp_min(1e-6))


def mile_weight(tok: Tokens, gamma: float = 1.0) -> torch.Tensor:
    """MiLe's weight before normalisation: (1 + H_full) ** gamma."""
    return (1.0 + full_entropy(tok.logp.detach())) ** gamma


MILE_MEAN = BatchStat("weight_mean", values=lambda tok, hp: mile_weight(tok, hp["gamma"]),
                      reduce=lambda x, hp: x.mean())


@needs(MILE_MEAN)
def mile_gate(tok: Tokens, gamma: float = 1.0, weight_mean: float | None = None) -> torch.Tensor:
    """MiLe (Su et al. 2023): (1 + H_full) ** gamma, normalised to mean 1 over the batch's supervised tokens."""
    w = mile_weight(tok, gamma)
    return w / (weight_mean if weight_mean is not None else MILE_MEAN.of(tok, {"gamma": gamma}))


def flow_gate(tok: Tokens, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """FLOW (Sanyal et al. 2025): a static per-sample weight, w_i ~ exp(-L_i(theta_0) / tau), tau = median.

    The weights come from `python -m training.precompute` (normalised to mean 1 over the data set) and reach
    the loss as `sample_weights` (B,): an input, indexed by each token's row, so no batch statistic."""
    if sample_weights is None:
        raise ValueError("flow needs sample_weights (B,), one static weight per sequence from the base model "
                         "(in the eaft-repro repository: `python -m training.precompute`, then method=flow)")
    return sample_weights.to(tok.ce.device, torch.float32)[tok.rows].detach()


# ---------------------------------------------------------------------------------------------------------
# Statistics and the losses.


@torch.no_grad()
def token_sums(tok: Tokens, gate: torch.Tensor | None, entropy: torch.Tensor | None = None) -> dict:
    """`token_stats` as 0-dim tensors (no device sync), so chunks can be added up before one `.item()` each.

    `entropy` (N,): the full-vocabulary entropy when the caller already has it (the fused path computes it
    without an extra (N, V) temporary); otherwise it is computed from `tok.logp`."""
    if tok.ce.numel() == 0:
        return {"n_tokens": 0.0}
    ce = tok.ce.detach()
    h = full_entropy(tok.logp.detach()) if entropy is None else entropy
    p = tok.prob
    g = torch.ones_like(ce) if gate is None else gate.float()
    conflict = (h < CONFLICT_MAX_ENTROPY) & (p < CONFLICT_MAX_PROB)
    high, low = h >= HIGH_ENTROPY_MIN, h <= LOW_ENTROPY_MAX
    return {
        "n_tokens": float(ce.numel()),
        "gate_sum": g.sum(),
        "ce_sum": ce.sum(),
        "entropy_sum": h.sum(),
        "conflict_count": conflict.sum(),
        "conflict_ce_sum": ce[conflict].sum(),
        "conflict_gate_sum": g[conflict].sum(),
        "high_entropy_count": high.sum(),
        "high_entropy_ce_sum": ce[high].sum(),
        "low_entropy_count": low.sum(),
        "low_entropy_ce_sum": ce[low].sum(),
    }


def token_stats(tok: Tokens, gate: torch.Tensor | None, entropy: torch.Tensor | None = None) -> dict[str, float]:
    """Sums (not means) so that several micro-batches can be added before dividing: see `finalize_stats`."""
    return {k: float(v) for k, v in token_sums(tok, gate, entropy).items()}


def finalize_stats(sums: dict[str, float]) -> dict[str, float]:
    """Turn accumulated `token_stats` sums into the logged means and shares."""
    n = sums.get("n_tokens", 0.0)
    if n == 0:
        return {}

    def ratio(a, b):
        return sums[a] / sums[b] if sums.get(b) else float("nan")

    return {
        "gate_mean": ratio("gate_sum", "n_tokens"),
        "token_ce": ratio("ce_sum", "n_tokens"),
        "entropy_mean": ratio("entropy_sum", "n_tokens"),
        "conflict_share": ratio("conflict_count", "n_tokens"),
        "conflict_loss_share": ratio("conflict_ce_sum", "ce_sum"),
        "conflict_gate_mean": ratio("conflict_gate_sum", "conflict_count"),
        "ce_high_entropy": ratio("high_entropy_ce_sum", "high_entropy_count"),
        "ce_low_entropy": ratio("low_entropy_ce_sum", "low_entropy_count"),
    }


def weighted_ce(gate_fn: Callable, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None,
                stats: dict | None = None, **hparams) -> torch.Tensor:
    """sum_t gate_t * CE_t / N. `stats`, when a dict, receives `token_stats` sums."""
    tok = supervised_tokens(logits, labels)
    gate = gate_fn(tok, **with_batch_stats(gate_fn, tok, hparams)) if tok.ce.numel() else None
    if stats is not None:
        stats.update(token_stats(tok, gate))
    return reduce_loss(gated_ce(tok, gate), logits, num_items_in_batch)


def _gated(gate_fn: Callable) -> Callable:
    def loss(logits, labels, num_items_in_batch=None, stats=None, **hparams):
        return weighted_ce(gate_fn, logits, labels, num_items_in_batch, stats, **hparams)

    loss.__name__ = gate_fn.__name__.replace("_gate", "_loss")
    loss.__doc__ = gate_fn.__doc__
    return loss


def sft_kl_loss(logits, labels, num_items_in_batch=None, stats=None, ref_logits=None, beta: float = 0.5,
                direction: str = "reverse") -> torch.Tensor:
    """SFT-KL: CE_t + beta * KL_t on supervised tokens, KL over the full vocabulary, exact (no estimator).

    direction="reverse" (default): KL(pi_theta || pi_ref), the actor-first KL that verl (the paper's SFT-KL
    trainer) penalises. direction="forward": KL(pi_ref || pi_theta). `ref_logits` (B, T, V): the frozen base
    model's logits on the same batch.
    """
    if ref_logits is None:
        raise ValueError("sft_kl needs ref_logits (B, T, V) from the frozen base model")
    tok = supervised_tokens(logits, labels)
    if stats is not None:
        stats.update(token_stats(tok, None))
    if tok.ce.numel() == 0:
        return reduce_loss(tok.ce, logits, num_items_in_batch)
    ref = supervised_tokens(ref_logits.detach(), labels).logp  # (N, V)
    if direction == "reverse":
        kl = (tok.logp.exp() * (tok.logp - ref)).sum(-1)
    elif direction == "forward":
        kl = (ref.exp() * (ref - tok.logp)).sum(-1)
    else:
        raise ValueError(f"sft_kl direction must be 'reverse' or 'forward', got {direction!r}")
    return reduce_loss(tok.ce + beta * kl, logits, num_items_in_batch)


GATES: dict[str, Callable] = {
    "sft": sft_gate,
    "eaft": eaft_gate,
    "eaft_sig": eaft_sig_gate,
    "masked_sft": masked_sft_gate,
    "dft": dft_gate,
    "talr": talr_gate,
    "mile": mile_gate,
    "flow": flow_gate,
}

LOSSES: dict[str, Callable] = {name: _gated(fn) for name, fn in GATES.items()}
LOSSES["sft_kl"] = sft_kl_loss


def get_loss(name: str) -> Callable:
    """LOSSES[name], with an error that lists the valid names."""
    if name not in LOSSES:
        raise KeyError(f"unknown method {name!r}; valid methods: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]

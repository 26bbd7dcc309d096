"""Every loss against a straightforward fp64 reference written here, plus the analytic cases, plus the shared
per-token pieces (batch statistics by declaration, the closed-form gradient) for every gate in GATES.

The references loop over tokens and use only torch.log_softmax / topk, independently of eaft_loss.losses (packages/eaft-loss).
"""

import inspect
import math

import pytest
import torch
from eaft_loss.losses import (
    GATES,
    LOSSES,
    gated_ce,
    gated_ce_grad_,
    get_loss,
    missing_batch_stats,
    supervised_tokens,
    topk_entropy,
    with_batch_stats,
)

torch.manual_seed(0)
B, T, V = 3, 7, 50


def random_batch(dtype=torch.float64, ignore_frac=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < ignore_frac] = -100
    labels[:, 0] = -100
    return logits, labels


def ref_tokens(logits, labels):
    """[(b, t, logits_row (V,), target)] for supervised next-token positions, fp64."""
    out = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != -100:
                out.append((b, t, logits[b, t].detach().double(), y))
    return out


def ref_topk_entropy(row, k):
    top = torch.sort(row, descending=True).values[:k]
    q = torch.softmax(top, -1)
    return float(-(q * torch.log(q)).sum())


def ref_full_entropy(row):
    p = torch.softmax(row, -1)
    return float(-(p * torch.log(p)).sum())


def ref_loss(logits, labels, gate, num_items=None):
    """sum_t gate(b, row, y, ces) * CE_t / N with the gate a python float, as a differentiable fp64 scalar."""
    toks = ref_tokens(logits, labels)
    ces = [float(-torch.log_softmax(r.detach(), -1)[y]) for _, _, r, y in toks]
    total = 0.0
    for i, (b, t, _, y) in enumerate(toks):
        ce_i = -torch.log_softmax(logits[b, t].double(), -1)[y]
        total = total + gate(i, toks, ces) * ce_i
    n = num_items if num_items is not None else len(toks)
    return total / n


def ref_gate(name, **hp):
    """The paper's definitions, token by token."""
    def eaft(i, toks, ces):
        k, alpha, norm = hp.get("k", 20), hp.get("alpha", 1.0), hp.get("norm")
        h = ref_topk_entropy(toks[i][2], k) / (math.log(k) if norm is None else norm)
        return h ** alpha

    def eaft_sig(i, toks, ces):
        k, norm = hp.get("k", 20), hp.get("norm")
        h = ref_topk_entropy(toks[i][2], k) / (math.log(k) if norm is None else norm)
        return 1 / (1 + math.exp(-hp.get("a", 30.0) * (h - hp.get("b", 0.17))))

    def dft(i, toks, ces):
        return math.exp(-ces[i])

    def talr(i, toks, ces):
        tau = float(torch.tensor(ces).median())
        return math.exp(-ces[i] / tau)

    def mile(i, toks, ces):
        g = hp.get("gamma", 1.0)
        ws = [(1 + ref_full_entropy(r)) ** g for _, _, r, _ in toks]
        return ws[i] / (sum(ws) / len(ws))

    def flow(i, toks, ces):
        return float(hp["sample_weights"][toks[i][0]])

    def masked(i, toks, ces):
        k = hp.get("k", 20)
        h = ref_topk_entropy(toks[i][2], k)
        drop = h <= hp["entropy_threshold"]
        if hp.get("mode") == "entropy_and_prob":
            drop = drop and math.exp(-ces[i]) <= hp["prob_threshold"]
        return 0.0 if drop else 1.0

    return {"sft": lambda i, t, c: 1.0, "eaft": eaft, "eaft_sig": eaft_sig, "dft": dft, "talr": talr,
            "mile": mile, "flow": flow, "masked_sft": masked}[name]


CASES = [
    ("sft", {}),
    ("eaft", {}),
    ("eaft", {"k": 5, "alpha": 2.0, "norm": 3.0}),
    ("eaft", {"k": 20, "alpha": 3.0}),
    ("eaft_sig", {}),
    ("eaft_sig", {"a": 10.0, "b": 0.5, "k": 8}),
    ("dft", {}),
    ("talr", {}),
    ("mile", {}),
    ("mile", {"gamma": 0.5}),
    ("flow", {"sample_weights": torch.tensor([0.5, 1.0, 2.0])}),
    ("masked_sft", {"mode": "entropy", "entropy_threshold": 1.5}),
    ("masked_sft", {"mode": "entropy_and_prob", "entropy_threshold": 1.5, "prob_threshold": 0.05}),
]


@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("num_items", [None, 17])
def test_value_and_gradient_match_reference(name, hp, num_items):
    logits, labels = random_batch()
    x = logits.clone().requires_grad_(True)
    loss = LOSSES[name](x, labels, num_items_in_batch=num_items, **hp)
    loss.backward()
    xr = logits.clone().requires_grad_(True)
    ref = ref_loss(xr, labels, ref_gate(name, **hp), num_items)
    ref.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    # gradient = gate x CE gradient: the reference treats the gate as a constant.
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


def ref_kl(logits, ref_logits, labels, beta, direction, num_items=None):
    total, toks = 0.0, ref_tokens(logits, labels)
    for b, t, _, y in toks:
        lp = torch.log_softmax(logits[b, t].double(), -1)
        lq = torch.log_softmax(ref_logits[b, t].double(), -1)
        kl = (lp.exp() * (lp - lq)).sum() if direction == "reverse" else (lq.exp() * (lq - lp)).sum()
        total = total + (-lp[y]) + beta * kl
    return total / (num_items if num_items is not None else len(toks))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_sft_kl_matches_reference(direction):
    logits, labels = random_batch()
    ref_logits = random_batch(seed=1)[0]
    x = logits.clone().requires_grad_(True)
    loss = LOSSES["sft_kl"](x, labels, ref_logits=ref_logits, beta=0.5, direction=direction)
    loss.backward()
    xr = logits.clone().requires_grad_(True)
    ref = ref_kl(xr, ref_logits, labels, 0.5, direction)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


def test_sft_kl_is_sft_when_reference_equals_policy():
    logits, labels = random_batch()
    kl = LOSSES["sft_kl"](logits, labels, ref_logits=logits.clone())
    assert kl.item() == pytest.approx(LOSSES["sft"](logits, labels).item(), rel=1e-6)


def test_sft_equals_torch_cross_entropy():
    logits, labels = random_batch(torch.float32)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert LOSSES["sft"](logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_uniform_logits_give_gate_one():
    logits = torch.zeros(2, 6, 64, requires_grad=True)
    labels = torch.randint(0, 64, (2, 6))
    sft = LOSSES["sft"](logits, labels)
    eaft = LOSSES["eaft"](logits, labels)  # norm = ln k: exactly SFT
    assert eaft.item() == pytest.approx(sft.item(), rel=1e-6)
    eaft3 = LOSSES["eaft"](logits, labels, norm=3.0)  # the authors' constant: SFT x ln(20)/3
    assert eaft3.item() == pytest.approx(sft.item() * math.log(20) / 3.0, rel=1e-6)


def test_one_hot_logits_give_gate_zero():
    logits = torch.full((2, 6, 64), -1e4)
    logits[..., 3] = 1e4
    logits.requires_grad_(True)
    labels = torch.randint(4, 64, (2, 6))  # the model is sure of token 3; every label disagrees
    loss = LOSSES["eaft"](logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0
    assert LOSSES["sft"](logits, labels).item() > 1e3  # the confident conflict SFT would push hardest on


def test_alpha_zero_is_plain_cross_entropy():
    logits, labels = random_batch(torch.float32)
    assert LOSSES["eaft"](logits, labels, alpha=0.0).item() == pytest.approx(
        LOSSES["sft"](logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_tokens_contribute_nothing_and_get_no_gradient(name):
    logits, labels = random_batch(torch.float32)
    kwargs = extra_kwargs(name, logits)
    x = logits.clone().requires_grad_(True)
    LOSSES[name](x, labels, **kwargs).backward()
    ignored_next = torch.zeros(B, T, dtype=torch.bool)
    ignored_next[:, :-1] = labels[:, 1:] == -100
    ignored_next[:, -1] = True  # the last position predicts nothing
    assert torch.count_nonzero(x.grad[ignored_next]) == 0
    # changing the logits at ignored positions changes nothing
    y = logits.clone()
    y[ignored_next] = torch.randn_like(y[ignored_next]) * 10
    assert LOSSES[name](y, labels, **kwargs).item() == pytest.approx(
        LOSSES[name](logits, labels, **kwargs).item(), rel=1e-6)


def extra_kwargs(name, logits):
    if name == "sft_kl":
        return {"ref_logits": torch.zeros_like(logits)}
    if name == "flow":
        return {"sample_weights": torch.ones(logits.shape[0])}
    return {}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_ignored_batch_is_zero_with_a_gradient_path(name):
    logits = torch.randn(2, 5, V, requires_grad=True)
    labels = torch.full((2, 5), -100)
    loss = LOSSES[name](logits, labels, **extra_kwargs(name, logits))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_logits_are_upcast(name):
    logits, labels = random_batch(torch.float32)
    bf = logits.bfloat16()
    kwargs = extra_kwargs(name, logits)
    if name == "sft_kl":
        kwargs = {"ref_logits": torch.zeros_like(bf)}
    loss = LOSSES[name](bf, labels, **kwargs)
    assert loss.dtype == torch.float32
    ref = LOSSES[name](bf.float(), labels, **kwargs)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_num_items_in_batch_is_the_denominator():
    logits, labels = random_batch(torch.float32)
    n = int((labels[:, 1:] != -100).sum())
    for name in ("sft", "eaft"):
        plain = LOSSES[name](logits, labels)
        assert LOSSES[name](logits, labels, num_items_in_batch=torch.tensor(4 * n)).item() == pytest.approx(
            plain.item() / 4, rel=1e-6)


def test_eaft_divides_by_token_count_not_by_gate_sum():
    logits, labels = random_batch(torch.float32)
    tok = supervised_tokens(logits, labels)
    gate = GATES["eaft"](tok)
    expected = (gate * tok.ce).sum() / tok.ce.numel()
    assert LOSSES["eaft"](logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert gate.sum() < tok.ce.numel()  # so the two reductions really differ here


def test_masked_sft_per_batch_drops_the_lowest_entropy_fraction():
    logits, labels = random_batch(torch.float32, ignore_frac=0.0)
    tok = supervised_tokens(logits, labels)
    gate = GATES["masked_sft"](tok, mode="entropy", q=0.25)
    h = topk_entropy(tok.logits, 20)
    dropped = gate == 0
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=1 / tok.ce.numel() + 1e-9)
    assert h[dropped].max() <= h[~dropped].min()
    both = GATES["masked_sft"](tok, mode="entropy_and_prob", q=0.25)
    assert (both == 0).sum() <= dropped.sum()  # the pilot mask drops a subset
    with pytest.raises(ValueError, match="entropy_and_prob"):
        GATES["masked_sft"](tok, mode="nonsense")


def test_gate_statistics():
    logits, labels = random_batch(torch.float32)
    stats = {}
    LOSSES["eaft"](logits, labels, stats=stats)
    n = int((labels[:, 1:] != -100).sum())
    assert stats["n_tokens"] == n
    from eaft_loss.losses import finalize_stats
    fin = finalize_stats(stats)
    assert 0 < fin["gate_mean"] < 1
    assert 0 <= fin["conflict_share"] <= 1
    for key in ("ce_high_entropy", "ce_low_entropy", "token_ce", "conflict_loss_share"):
        assert key in fin


def test_topk_entropy_with_k_equal_vocab_is_full_entropy():
    logits = torch.randn(10, 30, dtype=torch.float64)
    full = torch.tensor([ref_full_entropy(r) for r in logits], dtype=torch.float64)
    torch.testing.assert_close(topk_entropy(logits, 30).double(), full, rtol=1e-5, atol=1e-6)


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(KeyError, match="eaft.*sft"):
        get_loss("eaft_v2")


def test_missing_per_batch_inputs_are_clear_errors():
    logits, labels = random_batch(torch.float32)
    with pytest.raises(ValueError, match="ref_logits"):
        LOSSES["sft_kl"](logits, labels)
    with pytest.raises(ValueError, match="precompute"):
        LOSSES["flow"](logits, labels)


# ---------------------------------------------------------------------------------------------------------
# The shared pieces, for every gate in GATES (generated: a new method is covered without an edit here).


def gate_inputs(name, tok):
    """The per-batch inputs a gate takes besides the tokens (FLOW's sample weights), by keyword."""
    params = inspect.signature(GATES[name]).parameters
    return {"sample_weights": torch.linspace(0.5, 2.0, B)} if "sample_weights" in params else {}


@pytest.mark.parametrize("name", GATES.keys())
def test_gated_ce_grad_is_the_autograd_gradient_of_gated_ce(name):
    """The fused path's closed-form gradient and the plain path's loss cannot drift apart."""
    logits, labels = random_batch(torch.float32)
    x = logits.clone().requires_grad_(True)
    tok = supervised_tokens(x, labels)
    gate = GATES[name](tok, **with_batch_stats(GATES[name], tok, gate_inputs(name, tok)))
    (auto,) = torch.autograd.grad(gated_ce(tok, gate).sum() / 17, tok.logits)
    closed = gated_ce_grad_(tok.logp.detach().exp(), tok.targets, gate, 1 / 17)
    torch.testing.assert_close(closed, auto, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(auto) > 0


@pytest.mark.parametrize("name", GATES.keys())
def test_a_gate_is_per_token_once_its_declared_statistics_are_given(name):
    """What the fused path relies on: with the declared batch statistics passed in, a token's weight does not
    depend on the other tokens. A gate reading an undeclared batch quantity fails here, and on the fused path."""
    logits, labels = random_batch(torch.float32, ignore_frac=0.0)
    tok = supervised_tokens(logits, labels)
    hp = with_batch_stats(GATES[name], tok, gate_inputs(name, tok))
    whole = GATES[name](tok, **hp)
    m = tok.ce.numel() // 3
    halves = [GATES[name](tok[:m], **hp), GATES[name](tok[m:], **hp)]
    if whole is None:  # the identity gate (weight 1 everywhere, SFT's): it must say so for every part too
        assert halves == [None, None], name
        return
    torch.testing.assert_close(torch.cat(halves), whole)


@pytest.mark.parametrize("name", GATES.keys())
def test_a_gate_alone_computes_its_declared_statistics_the_declared_way(name):
    """Called directly on a whole batch without its statistics (as precompute's checks do), a gate gives the
    weights `weighted_ce` gives it after filling them by the declaration."""
    logits, labels = random_batch(torch.float32)
    tok = supervised_tokens(logits, labels)
    for hp in ({}, {"mode": "entropy_and_prob"} if name == "masked_sft" else {}):
        hp = {**gate_inputs(name, tok), **hp}
        alone, filled = GATES[name](tok, **hp), GATES[name](tok, **with_batch_stats(GATES[name], tok, hp))
        assert (alone is None and filled is None) or torch.equal(alone, filled)


def test_the_batch_statistic_gates_declare_what_they_read():
    declared = {name: sorted(s.hparam for s in getattr(g, "batch_stats", ())) for name, g in GATES.items()}
    assert declared == {"sft": [], "eaft": [], "eaft_sig": [], "dft": [], "flow": [], "talr": ["tau"],
                        "mile": ["weight_mean"], "masked_sft": ["entropy_threshold", "prob_threshold"]}
    # a statistic the caller passes (precomputed thresholds) is not computed again; prob only in the pilot mode
    assert missing_batch_stats(GATES["masked_sft"], {"entropy_threshold": 1.0}) == []
    assert [s.hparam for s in missing_batch_stats(GATES["masked_sft"], {"mode": "entropy_and_prob"})] == [
        "entropy_threshold", "prob_threshold"]

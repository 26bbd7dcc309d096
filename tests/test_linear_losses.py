"""The fused-linear losses (eaft_loss.linear_losses, packages/eaft-loss) against the plain path LOSSES[name](hidden @ W.T, ...):
value, both gradients and gate statistics for every gate in GATES (cases generated from it, so a new method is
covered without an edit here) and several chunk sizes; batch statistics by declaration (a toy gate that declares
one, a toy gate that does not); the O(chunk x V) memory bound; the model hook (post-norm hidden states, no
logits); training with fused_loss on and off.

    python -m pytest tests/test_linear_losses.py               (default tier, about a minute)
    python -m pytest tests/test_linear_losses.py -m distributed (DeepSpeed ZeRO-3 on the CPU, 2 processes)
"""

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eaft_loss import linear_losses, losses
from eaft_loss.linear_losses import LINEAR_LOSSES, UNSUPPORTED
from eaft_loss.losses import GATES, LOSSES, BatchStat, finalize_stats, needs
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
B, T, D, V = 3, 11, 16, 60

# Per-batch inputs a gate takes besides the logits (what the Objective's hook hands the loss), by keyword.
INPUTS = {"sample_weights": lambda: torch.tensor([0.5, 1.0, 2.0])}


def inputs_for(name: str) -> dict:
    params = inspect.signature(GATES[name]).parameters
    return {k: make() for k, make in INPUTS.items() if k in params}


# Every gate is checked at its defaults (generated from GATES); these are hyper-parameters worth checking too.
VARIANTS = [
    ("eaft", {"k": 5, "alpha": 2.0, "norm": 3.0}),
    ("eaft_sig", {"a": 10.0, "b": 0.5, "k": 8, "norm": 3.0}),
    ("talr", {"tau": 2.0}),  # given: no first pass
    ("mile", {"gamma": 0.5}),
    ("masked_sft", {"mode": "entropy", "entropy_threshold": 1.5}),  # precomputed thresholds
    ("masked_sft", {"mode": "entropy_and_prob", "entropy_threshold": 1.5, "prob_threshold": 0.05}),
    ("masked_sft", {"mode": "entropy_and_prob", "q": 0.3}),  # both batch quantiles: first pass
]


def random_inputs(dtype=torch.float32, ignore_frac=0.3, seed=0, b=B, t=T):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, D, generator=g).to(dtype)
    weight = (torch.randn(V, D, generator=g) * 0.8).to(dtype)
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < ignore_frac] = -100
    labels[:, 0] = -100
    return hidden, weight, labels


def both_paths(name, hp, hidden, weight, labels, chunk_size, num_items=None):
    """(loss, grad_hidden, grad_weight, stats) for the fused and the plain path."""
    out = []
    for fused in (True, False):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        stats = {}
        if fused:
            loss = linear_losses.linear_weighted_ce(name, h, w, labels, num_items, chunk_size, stats, **hp)
        else:
            loss = losses.weighted_ce(GATES[name], h @ w.T, labels, num_items, stats, **hp)
        loss.backward()
        out.append((loss, h.grad, w.grad, stats))
    return out


def assert_paths_agree(name, hp, chunk_size, num_items=None):
    hidden, weight, labels = random_inputs()
    (lf, hf, wf, sf), (lp, hp_, wp, sp) = both_paths(name, hp, hidden, weight, labels, chunk_size, num_items)
    assert lf.dtype == torch.float32 and lf.shape == ()
    torch.testing.assert_close(lf, lp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hf, hp_, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wf, wp, rtol=1e-5, atol=1e-6)
    assert sf.keys() == sp.keys()
    for k in sp:
        assert sf[k] == pytest.approx(sp[k], rel=1e-6, abs=1e-5), k
    assert finalize_stats(sf)["gate_mean"] == pytest.approx(finalize_stats(sp)["gate_mean"], rel=1e-6)


def test_every_method_but_sft_kl_is_covered():
    assert set(LINEAR_LOSSES) == set(LOSSES) - {"sft_kl"} == set(GATES)
    assert set(UNSUPPORTED) == {"sft_kl"}
    with pytest.raises(KeyError, match="reference model"):
        linear_losses.linear_weighted_ce("sft_kl", *random_inputs())


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])  # one token, odd (a ragged last chunk), more than N
@pytest.mark.parametrize("num_items", [None, torch.tensor(23)], ids=["count", "num_items"])
@pytest.mark.parametrize("name", GATES.keys())
def test_every_gate_at_its_defaults_equals_the_plain_path(name, num_items, chunk_size):
    """Value, both gradients and statistics; a method added to GATES is covered here without an edit."""
    assert_paths_agree(name, inputs_for(name), chunk_size, num_items)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("name,hp", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_value_gradients_and_stats_equal_the_plain_path(name, hp, chunk_size):
    assert_paths_agree(name, {**inputs_for(name), **hp}, chunk_size, num_items=23)


def test_the_linear_losses_are_linear_weighted_ce_of_each_gate():
    hidden, weight, labels = random_inputs()
    for name, fn in LINEAR_LOSSES.items():
        hp = inputs_for(name)
        assert fn(hidden, weight, labels, 23, 5, **hp).item() == linear_losses.linear_weighted_ce(
            name, hidden, weight, labels, 23, 5, **hp).item(), name


# ---------------------------------------------------------------------------------------------------------
# Batch statistics: computed by the gate's declaration, or refused.


MEAN_CE = BatchStat("mean_ce", values=lambda tok, hp: tok.ce.detach(), reduce=lambda x, hp: x.mean())


@needs(MEAN_CE)
def toy_declared_gate(tok, mean_ce=None):
    """CE relative to the batch's mean CE, declared: correct on the fused path with no other edit."""
    ce = tok.ce.detach()
    return ce / (mean_ce if mean_ce is not None else MEAN_CE.of(tok, {}))


def toy_undeclared_gate(tok):
    """The same weights, the batch mean not declared: per chunk it would silently be another loss."""
    ce = tok.ce.detach()
    return ce / ce.mean()


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_a_new_gate_that_declares_its_batch_statistic_is_right_on_the_fused_path(monkeypatch, chunk_size):
    monkeypatch.setitem(GATES, "toy", toy_declared_gate)
    assert_paths_agree("toy", {}, chunk_size, num_items=23)


def test_a_new_gate_with_an_undeclared_batch_statistic_fails_on_the_fused_path(monkeypatch):
    monkeypatch.setitem(GATES, "toy", toy_undeclared_gate)
    hidden, weight, labels = random_inputs()
    assert torch.isfinite(losses.weighted_ce(toy_undeclared_gate, hidden @ weight.T, labels))  # whole batch: fine
    with pytest.raises(ValueError, match="'toy' gate.*does not declare.*needs"):
        linear_losses.linear_weighted_ce("toy", hidden, weight, labels, chunk_size=4)
    # even when the whole batch fits in one chunk, so the failure does not depend on the batch size
    with pytest.raises(ValueError, match="'toy' gate"):
        linear_losses.linear_weighted_ce("toy", hidden, weight, labels, chunk_size=1000)


@pytest.mark.parametrize("given", [False, True], ids=["computed", "passed-in"])
@pytest.mark.parametrize("name", GATES.keys())
def test_a_first_pass_runs_exactly_when_a_declared_statistic_is_missing(name, given):
    """One forward matmul per chunk for the first pass, three per chunk for the main pass, none wasted."""
    hidden, weight, labels = random_inputs()
    hp = inputs_for(name)
    if given:  # the declared statistics, computed over the whole batch and passed in (precomputed)
        hp = losses.with_batch_stats(GATES[name], losses.supervised_tokens(hidden @ weight.T, labels), hp)
    first_pass = bool(losses.missing_batch_stats(GATES[name], hp))
    assert first_pass == (not given and bool(getattr(GATES[name], "batch_stats", ())))
    n_chunks = -(-int((labels[:, 1:] != -100).sum()) // 4)
    with _LargestTensor() as rec:
        loss = LINEAR_LOSSES[name](hidden.requires_grad_(True), weight, labels, chunk_size=4, **hp)
    assert rec.matmuls == n_chunks * (3 + first_pass)
    plain = LOSSES[name](hidden @ weight.T, labels, **hp)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,hp", [("sft", {}), ("eaft", {}), ("mile", {})], ids=["sft", "eaft", "mile"])
def test_default_denominator_is_the_supervised_token_count(name, hp):
    hidden, weight, labels = random_inputs()
    (lf, _, wf, _), (lp, _, wp, _) = both_paths(name, hp, hidden, weight, labels, chunk_size=5)
    torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wf, wp, rtol=1e-4, atol=1e-6)


def test_masked_sft_batch_quantile_really_drops_tokens():
    """The prepass case must not silently degenerate to a keep-all mask."""
    hidden, weight, labels = random_inputs(ignore_frac=0.0)
    stats = {}
    LINEAR_LOSSES["masked_sft"](hidden, weight, labels, chunk_size=4, stats=stats, mode="entropy", q=0.3)
    assert 0.6 < stats["gate_sum"] / stats["n_tokens"] < 0.8


@pytest.mark.parametrize("name", sorted(LINEAR_LOSSES))
def test_all_ignored_batch_is_zero_with_a_gradient_path(name):
    hidden, weight, _ = random_inputs()
    labels = torch.full((B, T), -100)
    hp = {"sample_weights": torch.ones(B)} if name == "flow" else {}
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    stats = {}
    loss = LINEAR_LOSSES[name](h, w, labels, chunk_size=4, stats=stats, **hp)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert h.grad is not None and w.grad is not None
    assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0
    assert stats == {"n_tokens": 0.0}


def test_ignored_positions_get_no_gradient():
    hidden, weight, labels = random_inputs()
    h = hidden.requires_grad_(True)
    LINEAR_LOSSES["eaft"](h, weight, labels, chunk_size=3).backward()
    no_target = torch.ones(B, T, dtype=torch.bool)
    no_target[:, :-1] = labels[:, 1:] == -100
    assert torch.count_nonzero(h.grad[no_target]) == 0
    assert torch.count_nonzero(h.grad[~no_target].abs().sum(-1)) == int((~no_target).sum())


@pytest.mark.parametrize("name", ["eaft", "mile", "talr"])
def test_no_grad_evaluation_gives_the_same_loss_and_stats_without_gradients(name):
    hidden, weight, labels = random_inputs()
    s_grad, s_eval = {}, {}
    with _LargestTensor() as rec_grad:
        with_grad = LINEAR_LOSSES[name](hidden.requires_grad_(True), weight, labels, chunk_size=4, stats=s_grad)
    with torch.no_grad(), _LargestTensor() as rec_eval:
        evaluated = LINEAR_LOSSES[name](hidden, weight, labels, chunk_size=4, stats=s_eval)
    assert not evaluated.requires_grad
    assert evaluated.item() == pytest.approx(with_grad.item(), rel=1e-6)
    assert s_eval == pytest.approx(s_grad, rel=1e-6)
    n_chunks = -(-int((labels[:, 1:] != -100).sum()) // 4)
    # per chunk: logits, grad_h, grad_w (+ the entropy bmm) with gradients; logits (+ bmm) without
    assert rec_eval.matmuls == rec_grad.matmuls - 2 * n_chunks


def test_incoming_gradient_scales_both_gradients():
    hidden, weight, labels = random_inputs()
    grads = []
    for factor in (1.0, 2.5):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        (factor * LINEAR_LOSSES["eaft"](h, w, labels, chunk_size=4)).backward()
        grads.append((h.grad, w.grad))
    torch.testing.assert_close(grads[1][0], 2.5 * grads[0][0])
    torch.testing.assert_close(grads[1][1], 2.5 * grads[0][1])


def test_bf16_inputs_match_the_plain_path_on_bf16_logits(monkeypatch):
    """bf16 hidden/weight: logits rounded to bf16 as lm_head would, fp32 loss; the weight gradient is summed in
    fp32 in vocabulary blocks (a small block here, so the blocked path runs)."""
    monkeypatch.setattr(linear_losses, "VOCAB_BLOCK", 16)
    hidden, weight, labels = random_inputs(torch.bfloat16)
    (lf, hf, wf, _), (lp, hp_, wp, _) = both_paths("eaft", {"norm": 3.0}, hidden, weight, labels, chunk_size=5)
    assert lf.dtype == torch.float32 and hf.dtype == torch.bfloat16 and wf.dtype == torch.bfloat16
    torch.testing.assert_close(lf, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hf.float(), hp_.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(wf.float(), wp.float(), rtol=2e-2, atol=2e-3)


def test_cpu_autocast_computes_the_logits_in_bf16_like_lm_head():
    hidden, weight, labels = random_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = LINEAR_LOSSES["eaft"](hidden, weight, labels, chunk_size=4)
        plain = LOSSES["eaft"](torch.nn.functional.linear(hidden, weight), labels)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns, and the matmuls run."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.matmuls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.matmuls += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_,
                                                 torch.ops.aten.bmm)
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("name,hp", [("eaft", {}), ("talr", {}), ("mile", {})])
def test_no_tensor_grows_with_tokens_times_vocabulary(name, hp):
    """Forward and backward never create anything of N x V elements: the largest tensor is a (chunk, V) buffer,
    the (V, d) weight gradient or the (B, T, d) hidden gradient."""
    b, t, chunk, vocab, d = 4, 64, 8, 300, 8
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, d, generator=g, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (b, t), generator=g)
    n = int((labels[:, 1:] != -100).sum())
    with _LargestTensor() as rec:
        LINEAR_LOSSES[name](hidden, weight, labels, chunk_size=chunk, stats={}, **hp).backward()
    assert rec.max_numel <= max(chunk * vocab, vocab * d, b * t * d) < n * vocab // 20
    with _LargestTensor() as plain:
        LOSSES[name](hidden @ weight.T, labels, **hp).backward()
    assert plain.max_numel >= n * vocab  # the recorder does see full logits when they exist


# ---------------------------------------------------------------------------------------------------------
# The model side: what the hook asks transformers for.


def tiny_model(kind: str):
    from transformers import AutoConfig, AutoModelForCausalLM
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 64}
    spec = {"qwen3": {"model_type": "qwen3", "head_dim": 8, "tie_word_embeddings": True, **common},
            "llama": {"model_type": "llama", "tie_word_embeddings": False, **common}}[kind]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec)).float()


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_last_hidden_state_is_what_lm_head_sees_and_no_logits_are_made(kind):
    model = tiny_model(kind)
    ids = torch.randint(0, 97, (2, 9))
    seen = []
    model.lm_head.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    full = model(input_ids=ids)
    out = model(input_ids=ids, logits_to_keep=torch.zeros(0, dtype=torch.long), output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], seen[0])  # after the final norm, not the last layer's
    assert not torch.equal(out.hidden_states[-1], out.hidden_states[-2])
    assert out.logits.shape == (2, 0, 97)
    torch.testing.assert_close(out.hidden_states[-1] @ model.lm_head.weight.T, full.logits)


@pytest.mark.parametrize("kind,checkpointing", [("qwen3", False), ("llama", False), ("qwen3", True)])
def test_objective_fused_gives_the_plain_gradients_on_every_parameter(kind, checkpointing):
    """Through the Objective's hook, as the Trainer runs it. Qwen3 here has tied embeddings: the shared
    Parameter must get embedding + head gradient exactly once. Gradient checkpointing (trainer=paper) too."""
    from eaft_loss.objective import Objective
    grads = {}
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :3] = -100
    for fused in (True, False):
        model = tiny_model(kind).train()
        if checkpointing:
            # transformers 5.2x renamed it; the Trainer's gradient_checkpointing=true calls the same thing
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        if kind == "qwen3":
            assert model.lm_head.weight is model.model.embed_tokens.weight
        obj = Objective("eaft", {"norm": 3.0}, fused=fused, chunk_size=3)
        obj.attach(model)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert (out.logits.shape[1] == 0) == fused
        obj(out, labels, num_items_in_batch=torch.tensor(20)).backward()
        grads[fused] = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert grads[True].keys() == grads[False].keys()
    for k in grads[False]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-6, msg=k)


def test_switch_resolution_and_errors():
    from eaft_loss.objective import Objective, resolve_fused
    assert resolve_fused("auto", "eaft") and not resolve_fused("auto", "sft_kl")
    assert resolve_fused(True, "mile") and not resolve_fused(False, "eaft")
    with pytest.raises(ValueError, match="sft_kl.*reference model.*fused_loss=false"):
        resolve_fused(True, "sft_kl")
    with pytest.raises(ValueError, match="auto, true or false"):
        resolve_fused("yes", "eaft")
    model = tiny_model("llama")
    model.lm_head = torch.nn.Linear(32, 97, bias=True)
    with pytest.raises(ValueError, match="bias-free"):
        Objective("eaft", fused=True).attach(model)


# ---------------------------------------------------------------------------------------------------------
# Training.


def _cfg(*overrides):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("train", overrides=list(overrides))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_with_the_switch_on_and_off_reaches_the_same_losses(tmp_path):
    """Tiny Qwen3 (tied embeddings), 4 Adam steps, EAFT, through training.train.main: the same loss, gradient norm
    and gate statistics at every step, and only the fused run says fused in run_info.json."""
    from training.train import main
    runs = {}
    for fused in ("true", "false"):
        info = main(_cfg("method=eaft", f"out_dir={tmp_path}", f"run_name=fused-{fused}", "trainer.max_steps=4",
                         "trainer.save_strategy=no", f"fused_loss={fused}", "fused_chunk_size=13"))
        assert info["fused_loss"] is (fused == "true")
        runs[fused] = [m for m in _metrics(tmp_path / f"fused-{fused}") if "loss" in m]
    assert [m["step"] for m in runs["true"]] == [1, 2, 3, 4]
    for on, off in zip(runs["true"], runs["false"]):
        for key in ("loss", "grad_norm", "gate_mean", "token_ce", "entropy_mean", "conflict_share"):
            assert on[key] == pytest.approx(off[key], rel=1e-4, abs=1e-7), (on["step"], key)
    assert runs["true"][-1]["loss"] < runs["true"][0]["loss"]


def test_cli_fused_true_with_sft_kl_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "training.train", "method=sft_kl", "fused_loss=true",
                           f"out_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode != 0
    assert "fused_loss=true" in proc.stderr and "sft_kl" in proc.stderr and "fused_loss=false" in proc.stderr


@pytest.mark.distributed
@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "untied-head"])
def test_deepspeed_zero3_fused_matches_unfused(tmp_path, tied):
    """Two CPU ranks under torchrun, ZeRO-3 (the head weight is partitioned): fused and unfused EAFT give the same
    losses and gradient norms, with the head tied to the embedding (Qwen3-4B) and with its own weight (GLM-4-9B,
    Qwen2.5-32B; the fused loss crashed there until it ran as the head's own forward)."""
    from conftest import need

    need("distributed", importlib.util.find_spec("deepspeed") is not None, "deepspeed is not installed (make setup)")
    data = tmp_path / "train.jsonl"
    shutil.copy(REPO / "tests/assets/tiny_chat.jsonl", data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    runs = {}
    for fused in ("true", "false"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29500 + (fused == "true") + 2 * tied), "-m", "training.train", "deepspeed=zero3", "method=eaft",
               f"fused_loss={fused}", "fused_chunk_size=13", f"data.train_file={data}", f"out_dir={tmp_path}",
               f"run_name=z3-{fused}", "trainer.max_steps=3", "trainer.save_strategy=no",
               "trainer.per_device_train_batch_size=4", f"model.from_config.tie_word_embeddings={str(tied).lower()}"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr[-5000:]
        assert ("gathering the ZeRO-3 partitioned head weight" in proc.stdout) == (fused == "true")
        runs[fused] = [m for m in _metrics(tmp_path / f"z3-{fused}") if "loss" in m]
    assert len(runs["true"]) == 3
    for on, off in zip(runs["true"], runs["false"]):
        assert on["loss"] == pytest.approx(off["loss"], rel=1e-4)
        assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-3)


# ---------------------------------------------------------------------------------------------------------
# The benchmark script (training/bench.py) on a tiny shape: it runs, and its baselines compute the same loss.


def test_bench_baselines_agree_and_the_script_writes_its_table(tmp_path):
    from training import bench
    h, w, y = bench.make_inputs(40, 16, 300, torch.float32, torch.device("cpu"))
    n = torch.tensor(39)
    values = {m: bench.METHODS[m](h, w, y, n).item() for m in bench.METHODS}
    # The authors' EAFT reimplementation and ours (norm 3.0) are the same loss; the chunked ones too.
    for m in ("authors_eaft", "chunked_eaft", "chunked_eaft_stats"):
        assert values[m] == pytest.approx(values["ours_eaft"], rel=1e-5), m
    assert values["chunked_ce"] == pytest.approx(values["plain_ce"], rel=1e-5)
    rows, md = tmp_path / "rows.jsonl", tmp_path / "table.md"
    bench.main(["--tokens", "24,48", "--hidden", "16", "--vocab", "300", "--repeats", "1", "--results", str(rows),
                "--markdown", str(md), "--device", "cpu"])
    table = md.read_text()
    assert len(rows.read_text().splitlines()) == 2 * len(bench.DEFAULT_METHODS)
    assert f"| 48 | chunked_eaft | {linear_losses.DEFAULT_CHUNK_SIZE} |" in table and "python -m training.bench --tokens 24,48" in table


def test_bench_help_explains_the_shape_and_method_options(capsys):
    from training import bench
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "hidden size d of the head's input" in out and "vocabulary size V" in out
    assert "comma-separated cases to time, from: " + ", ".join(bench.METHODS) in out
    with pytest.raises(SystemExit):
        bench.main(["--methods", "chunked_eaft,nonsense"])
    assert "unknown --methods nonsense" in capsys.readouterr().err

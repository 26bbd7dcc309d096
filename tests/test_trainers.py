"""docs/trainers.md's HF Trainer and TRL examples, run as written on a tiny Qwen3-architecture model (built from a
config here, tied head, the committed tiny tokenizer) with the real transformers and TRL, plain and fused:

- the loss each logs at step 1 and TRL's compute_loss on its own collated batch equal an fp64 per-token reference
  (tests/test_losses.py's, independent of eaft_loss) on the same batch at the same weights;
- the gate statistics (gate_mean, token_ce, entropy_mean, conflict_share) reach trainer.state.log_history with
  the keys our own trainer writes to metrics.jsonl, and equal the reference's;
- fused and plain give the same loss and gradient norm at every step, and the fused runs never make a logits row;
- TRL's own collation and completion-only masking are what the loss sees (labels -100 on prompt and padding).

    python -m pytest tests/test_trainers.py -q          (default tier, about 40 s; TRL's tests skip without trl)
"""

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eaft_loss.losses import finalize_stats, supervised_tokens, token_stats

from tests.conftest import REPO, need
from tests.test_distributed import free_port
from tests.test_losses import ref_full_entropy, ref_gate, ref_loss, ref_tokens, ref_topk_entropy

DOC = REPO / "docs" / "trainers.md"
TOKENIZER = REPO / "tests" / "assets" / "tiny-tokenizer"
CHATS = REPO / "tests" / "assets" / "tiny_chat.jsonl"
HP = {"k": 20, "alpha": 1.0, "norm": 3.0}  # what the page's examples pass
ROWS, BATCH, STEPS = 8, 4, 2
LOGGED = ["gate_mean", "token_ce", "entropy_mean", "conflict_share"]


def doc_blocks(heading: str) -> list[str]:
    """The ```python blocks of docs/trainers.md's `## heading` section."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", DOC.read_text(), re.DOTALL | re.MULTILINE)
    assert m, f"docs/trainers.md has no '## {heading}' section"
    return re.findall(r"```python\n(.*?)```", m.group(1), re.DOTALL)


def doc_block(heading: str, contains: str) -> str:
    (block,) = [b for b in doc_blocks(heading) if contains in b]
    return block


def as_plain(block: str) -> str:
    """The same example with the fused loss off (the page shows fused=True)."""
    assert block.count("fused=True") == 1
    return block.replace("fused=True", "fused=False")


def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER)


def tiny_model(vocab: int):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=vocab,
                               max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).float().train()


def count_head_rows(model) -> list[int]:
    """Rows lm_head computes on each call, recorded by a forward hook."""
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[1]))
    return rows


def reference(model, batch) -> tuple[float, dict[str, float]]:
    """fp64 reference EAFT loss and gate statistics on `batch` under a copy of the model (no hooks)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"]
    loss = float(ref_loss(logits, labels, ref_gate("eaft", **HP)))
    toks = ref_tokens(logits, labels)
    gates = [(ref_topk_entropy(row, HP["k"]) / HP["norm"]) ** HP["alpha"] for *_, row, _ in toks]
    ces = [float(-torch.log_softmax(row, -1)[y]) for *_, row, y in toks]
    ents = [ref_full_entropy(row) for *_, row, _ in toks]
    conflicts = [h < 0.5 and math.exp(-ce) < 0.1 for h, ce in zip(ents, ces)]
    n = len(toks)
    return loss, {"gate_mean": sum(gates) / n, "token_ce": sum(ces) / n, "entropy_mean": sum(ents) / n,
                  "conflict_share": sum(conflicts) / n}


def logged_keys() -> set[str]:
    """The statistics our trainer writes to metrics.jsonl (training/objective.py), from any batch."""
    tok = supervised_tokens(torch.randn(1, 4, 30), torch.tensor([[-100, 1, 2, 3]]))
    return set(finalize_stats(token_stats(tok, None)))


def steps(history: list[dict]) -> list[dict]:
    return [h for h in history if "loss" in h]


# ---------------------------------------------------------------------------------------------------------
# HF Trainer: the page's two examples, with our chat collator (prompt tokens -100).


def hf_scope(out_dir, model_dir=None, **overrides) -> dict:
    """What the page's HF examples take as given: model, args, train_dataset, data_collator (our chat collator,
    prompt tokens -100); the first batch of the sequential sampler is rows[:BATCH] (global batch)."""
    from transformers import TrainingArguments

    from training.data import ChatCollator, build_examples, read_chat_jsonl
    tok = tokenizer()
    examples, _ = build_examples(read_chat_jsonl(CHATS)[:ROWS], tok, max_length=256)
    settings = {"per_device_train_batch_size": BATCH, "max_steps": STEPS, "logging_steps": 1, "learning_rate": 1e-3,
                "report_to": "none", "save_strategy": "no", "use_cpu": True, "seed": 0,
                "remove_unused_columns": False, "train_sampling_strategy": "sequential", **overrides}
    args = TrainingArguments(output_dir=str(out_dir), **settings)  # before the model: ZeRO-3 builds it partitioned
    if model_dir:  # from disk: under ZeRO-3 from_config would initialise the partitioned weights differently
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    else:
        model = tiny_model(len(tok))
    return {"model": model, "args": args, "train_dataset": examples,
            "data_collator": ChatCollator(tok.pad_token_id)}


def hf_run(block: str, tmp_path) -> dict:
    scope = hf_scope(tmp_path)
    before = copy.deepcopy(scope["model"])
    rows = count_head_rows(scope["model"])
    exec(compile(block, "docs/trainers.md", "exec"), scope)  # noqa: S102
    first = scope["data_collator"](scope["train_dataset"][:BATCH])  # the sequential sampler's first batch
    return {"history": scope["trainer"].state.log_history, "reference": reference(before, first), "rows": rows}


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    return {"plain": hf_run(doc_block("HF Trainer", "get_loss"), tmp_path_factory.mktemp("hf-plain")),
            "fused": hf_run(doc_block("HF Trainer", "Objective"), tmp_path_factory.mktemp("hf-fused")),
            "fused-off": hf_run(as_plain(doc_block("HF Trainer", "Objective")), tmp_path_factory.mktemp("hf-off"))}


@pytest.mark.parametrize("run", ["plain", "fused", "fused-off"])
def test_hf_trainer_logs_the_reference_loss_at_step_1(hf_runs, run):
    r = hf_runs[run]
    logged = steps(r["history"])
    assert [h["step"] for h in logged] == list(range(1, STEPS + 1))
    assert logged[0]["loss"] == pytest.approx(r["reference"][0], rel=1e-5)


def test_hf_trainer_fused_logs_the_reference_gate_statistics(hf_runs):
    for run in ("fused", "fused-off"):
        logged = steps(hf_runs[run]["history"])
        assert logged_keys() <= set(logged[0]), run
        for key in LOGGED:
            assert logged[0][key] == pytest.approx(hf_runs[run]["reference"][1][key], rel=1e-5, abs=1e-9), key
    assert "gate_mean" not in steps(hf_runs["plain"]["history"])[0]  # a bare function logs nothing extra


def test_hf_trainer_fused_and_plain_train_alike_and_fused_makes_no_logits(hf_runs):
    for run in ("fused", "fused-off"):
        for a, b in zip(steps(hf_runs["plain"]["history"]), steps(hf_runs[run]["history"])):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (run, a["step"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (run, a["step"])
    assert hf_runs["fused"]["rows"] and set(hf_runs["fused"]["rows"]) == {0}
    assert min(hf_runs["fused-off"]["rows"]) > 0 and min(hf_runs["plain"]["rows"]) > 0


# ---------------------------------------------------------------------------------------------------------
# TRL's SFTTrainer: its own tokenisation, collator and completion-only masking.


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def trl_run(block: str, tmp_path, bf16: bool = False) -> dict:
    need("trl", trl_available(), "TRL is not installed: pip install -c constraints-cpu.txt -e '.[trl]'")
    from datasets import Dataset
    from trl import SFTConfig

    from training.data import read_chat_jsonl
    tok = tokenizer()
    data = Dataset.from_list([{"prompt": row["messages"][:1], "completion": row["messages"][1:]}
                              for row in read_chat_jsonl(CHATS)[:ROWS]])
    model = tiny_model(len(tok))
    before = copy.deepcopy(model)
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=BATCH, max_steps=STEPS, logging_steps=1,
                     learning_rate=1e-3, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                     train_sampling_strategy="sequential", max_length=256, bf16=bf16)  # TRL's default: bf16
    scope = {"model": model, "args": args, "train_dataset": data, "tokenizer": tok}
    rows = count_head_rows(model)
    # Which backbone calls were asked for hidden states: the loss's forward, not TRL's metrics forward
    hidden_asked = []
    model.model.register_forward_pre_hook(lambda m, a, kw: hidden_asked.append(bool(kw.get("output_hidden_states"))),
                                          with_kwargs=True)
    train = "trainer.train()\n"
    assert block.endswith(train)
    exec(compile(block[: -len(train)], "docs/trainers.md", "exec"), scope)  # noqa: S102
    trainer = scope["trainer"]
    # TRL's first batch, as its own dataloader (sequential sampler) and collator make it
    batch = next(iter(trainer.get_train_dataloader()))
    direct = trainer.compute_loss(model, dict(batch)).item()
    scope["objective"].pop_stats()  # that call was not a training step
    exec(compile(train, "docs/trainers.md", "exec"), scope)  # noqa: S102
    return {"history": trainer.state.log_history, "reference": reference(before, batch), "rows": rows,
            "batch": batch, "direct": direct, "hidden_asked": hidden_asked}


@pytest.fixture(scope="module")
def trl_runs(tmp_path_factory):
    block = doc_block("TRL's SFTTrainer", "SFTTrainer")
    return {"fused": trl_run(block, tmp_path_factory.mktemp("trl-fused")),
            "plain": trl_run(as_plain(block), tmp_path_factory.mktemp("trl-plain")),
            "fused-bf16": trl_run(block, tmp_path_factory.mktemp("trl-fused-bf16"), bf16=True),
            "plain-bf16": trl_run(as_plain(block), tmp_path_factory.mktemp("trl-plain-bf16"), bf16=True)}


def test_trl_masks_the_prompt_and_the_padding(trl_runs):
    """TRL's first batch: each row is the chat template of prompt + completion, its labels -100 on the prompt
    (the template with the generation prompt, rendered here independently) and on the padding."""
    from training.data import read_chat_jsonl
    tok, batch = tokenizer(), trl_runs["fused"]["batch"]
    for i, row in enumerate(read_chat_jsonl(CHATS)[:BATCH]):
        prompt = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, return_dict=False)
        full = tok.apply_chat_template(row["messages"], return_dict=False)
        n, p = len(full), len(prompt)
        assert full[:p] == prompt and 0 < p < n
        assert batch["input_ids"][i, :n].tolist() == full
        assert batch["labels"][i, :n].tolist() == [-100] * p + full[p:]
        assert (batch["labels"][i, n:] == -100).all() and (batch["attention_mask"][i, n:] == 0).all()


@pytest.mark.parametrize("run", ["fused", "plain"])
def test_trl_loss_equals_the_reference(trl_runs, run):
    r = trl_runs[run]
    assert r["direct"] == pytest.approx(r["reference"][0], rel=1e-5)
    logged = steps(r["history"])
    assert [h["step"] for h in logged] == list(range(1, STEPS + 1))
    assert logged[0]["loss"] == pytest.approx(r["reference"][0], rel=1e-5)
    for key in LOGGED:
        assert logged[0][key] == pytest.approx(r["reference"][1][key], rel=1e-5, abs=1e-9), key
    assert "mean_token_accuracy" in logged[0]  # TRL's own metrics are still there


def test_trl_fused_and_plain_train_alike_and_fused_makes_no_logits(trl_runs):
    for a, b in zip(steps(trl_runs["plain"]["history"]), steps(trl_runs["fused"]["history"])):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["step"]
    # TRL's metrics forward uses its own fused head (no lm_head call); ours keeps no logits position
    assert trl_runs["fused"]["rows"] and set(trl_runs["fused"]["rows"]) == {0}
    assert min(trl_runs["plain"]["rows"]) > 0
    # every compute_loss: our forward (hidden states asked) then TRL's metrics forward, which the hook leaves alone
    assert trl_runs["fused"]["hidden_asked"] == [True, False] * (STEPS + 1)
    assert not any(trl_runs["plain"]["hidden_asked"])


def test_trl_fused_and_plain_agree_under_bf16_autocast(trl_runs):
    """SFTConfig's default bf16=True: lm_head and the fused loss's chunk matmuls both run in bf16 (autocast), in
    different blocks, so they agree to bf16 rounding, not to fp32 precision."""
    for a, b in zip(steps(trl_runs["plain-bf16"]["history"]), steps(trl_runs["fused-bf16"]["history"])):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2), a["step"]
    assert set(trl_runs["fused-bf16"]["rows"]) == {0}


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-3: the page's fused HF example, unchanged, with a DeepSpeed config and two CPU ranks.

ZERO3 = {"zero_optimization": {"stage": 3}, "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
         "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
ZERO3_SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
import deepspeed
deepspeed.init_distributed(auto_mpi_discovery=False)  # on the CPU: wrap torchrun's gloo group (training/train.py)
from tests.test_trainers import ZERO3, BATCH, as_plain, doc_block, hf_scope
block = doc_block("HF Trainer", "Objective")
scope = hf_scope({out!r}, {model!r}, deepspeed=ZERO3, per_device_train_batch_size=BATCH // 2)
exec(block if {fused!r} else as_plain(block), scope)
if int(os.environ["RANK"]) == 0:
    print("HISTORY " + json.dumps(scope["trainer"].state.log_history))
"""


@pytest.mark.distributed
def test_hf_fused_example_under_zero3_on_two_ranks(hf_runs, tmp_path):
    """2 ranks x 2 rows = the single-process run's batch of 4: the same step-1 loss and statistics as the
    reference, fused = plain at every step, and the fused run gathers the partitioned head weight."""
    torchrun = Path(sys.executable).parent / "torchrun"
    need("distributed", shutil.which("g++") is not None and torchrun.exists(),
         "DeepSpeed's CPU comm op is JIT-built with g++ (and ninja), launched by the venv's torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{torchrun.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # ninja
    tiny_model(len(tokenizer())).save_pretrained(tmp_path / "model")  # the weights the reference run starts from
    runs = {}
    for fused in (True, False):
        script = tmp_path / f"zero3_{fused}.py"
        script.write_text(ZERO3_SCRIPT.format(repo=str(REPO), out=str(tmp_path / f"out-{fused}"), fused=fused,
                                              model=str(tmp_path / "model")))
        proc = subprocess.run([str(torchrun), "--nproc-per-node=2", f"--master-port={free_port()}", str(script)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert ("gathering the ZeRO-3 partitioned head weight" in proc.stdout) == fused
        (line,) = [x for x in proc.stdout.splitlines() if x.startswith("HISTORY ")]
        runs[fused] = steps(json.loads(line[len("HISTORY "):]))
    assert [h["step"] for h in runs[True]] == list(range(1, STEPS + 1))
    reference_loss, reference_stats = hf_runs["fused"]["reference"]
    assert runs[True][0]["loss"] == pytest.approx(reference_loss, rel=1e-5)
    for key in LOGGED:
        assert runs[True][0][key] == pytest.approx(reference_stats[key], rel=1e-5, abs=1e-9), key
    for a, b in zip(runs[False], runs[True]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"],
                                                                                                rel=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Errors a user meets.


def test_objective_and_callback_errors():
    from eaft_loss import Objective
    from eaft_loss.hf import GateStatsCallback, log_gate_stats
    from transformers import Trainer, TrainingArguments
    with pytest.raises(ValueError, match="'aplha'.*it takes: k, alpha, norm"):
        Objective("eaft", {"aplha": 2.0})
    with pytest.raises(KeyError, match="unknown method 'eatf'; valid methods: .*eaft"):
        Objective("eatf")
    with pytest.raises(ValueError, match="sft_kl.*no fused version"):
        Objective("sft_kl", fused=True, ref_model=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"fused=True needs objective.attach\(model\)"):
        Objective("eaft", fused=True)({"logits": torch.zeros(1, 3, 8)}, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="eaft_loss.Objective"):
        GateStatsCallback(lambda outputs, labels, num_items_in_batch=None: 0)
    model = tiny_model(64)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="unused", report_to="none", use_cpu=True))
    with pytest.raises(ValueError, match="not the trainer's compute_loss_func"):
        log_gate_stats(trainer, Objective("eaft"))

"""Data-parallel training is the same computation as one process with the same global batch, on the real engines.

`torchrun` starts 2 CPU processes (gloo) training the tiny model with DeepSpeed ZeRO-2 and ZeRO-3; their per-step
loss, gradient norm and gate statistics (metrics.jsonl) and their final weights must equal those of one process
with the same global batch of 8 rows. What this checks is the normalisation across ranks: each rank divides its
token-loss sum by `num_items_in_batch` gathered over ranks AND the gradient-accumulation window (here 2 ranks x 2
rows x GA 2 against 1 process x 8 rows x GA 1), and the HF Trainer multiplies the loss by the number of processes
because DDP and ZeRO average gradients over ranks. The one-process baseline runs both without DeepSpeed and with it
(`torchrun --nproc-per-node 1`), so a DeepSpeed numerics difference cannot pass for a normalisation error.

    .venv/bin/python -m pytest -m distributed tests/test_distributed.py      (~6-10 min on 2 cores)

Choices that make a mismatch visible rather than hide it:
- plain SGD, constant lr, no clipping: the update is lr x gradient, so a wrongly scaled gradient changes every later
  loss (Adam's first steps are ~lr x sign(g), which hides scale errors);
- training rows of very different lengths, so ranks hold different token counts and a per-rank mean differs from
  the global mean (`test_per_rank_normalisation_is_detected` proves the comparison catches that);
- initial weights from a saved folder: ZeRO-3 builds models inside zero.Init, which draws a random init differently
  from a plain from_config.
The first DeepSpeed run on a machine JIT-builds a CPU comm op (~1-3 min; g++ and ninja; ~/.cache/torch_extensions).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import need

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STEPS = 6
GLOBAL_BATCH = 8
pytestmark = pytest.mark.distributed

# Every run: same data, same initial weights, same global batch; only the process layout and the engine differ.
COMMON = ["trainer=tiny", f"trainer.max_steps={STEPS}", f"trainer.save_steps={STEPS}", "trainer.optim=sgd",
          "trainer.learning_rate=0.5", "trainer.lr_scheduler_type=constant", "trainer.warmup_steps=0",
          "trainer.max_grad_norm=1e9",  # no clipping, but the norm is still computed and logged
          f"global_batch_size={GLOBAL_BATCH}", "data.max_length=512", "~model.from_config"]
COMPARED = ("loss", "grad_norm", "gate_mean", "token_ce")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    need("distributed", shutil.which("g++") is not None and (VENV_BIN / "torchrun").exists(),
         "DeepSpeed's CPU comm op is JIT-built with g++ (and ninja), launched by the venv's torchrun")
    root = tmp_path_factory.mktemp("dist")
    # Rows of 1 to 5 times the answer: supervised tokens per row vary about 5-fold.
    rows = [json.loads(line) for line in (REPO / "tests/assets/tiny_chat.jsonl").read_text().splitlines()]
    with (root / "train.jsonl").open("w") as f:
        for i, row in enumerate(rows):
            answer = row["messages"][-1]["content"]
            row["messages"][-1]["content"] = " ".join([answer] * (1 + (i * 7) % 5))
            f.write(json.dumps(row) + "\n")
    from hydra import compose, initialize_config_dir

    from common.models import load_model, load_tokenizer
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        model_cfg = compose("train", overrides=["model=tiny"]).model
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_cfg)
    load_model(model_cfg, tokenizer).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return {"root": root, "cache": {}}


def train(setup, name: str, nproc: int, *overrides) -> Path:
    """One training run; nproc=0 is plain `python -m training.train`, otherwise `torchrun --nproc-per-node`."""
    root = setup["root"]
    if name in setup["cache"]:
        return setup["cache"][name]
    args = [f"out_dir={root / 'runs'}", f"run_name={name}", f"data.train_file={root / 'train.jsonl'}",
            f"model.name_or_path={root / 'model'}", f"model.tokenizer={root / 'model'}", *COMMON, *overrides]
    if nproc:
        cmd = [str(VENV_BIN / "torchrun"), f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
               "-m", "training.train", *args]
    else:
        cmd = [sys.executable, "-m", "training.train", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # ninja
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    run_dir = root / "runs" / name
    setup["cache"][name] = run_dir
    return run_dir


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def assert_same_run(got: Path, ref: Path, rel: float = 1e-5) -> None:
    a, b = steps(got), steps(ref)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b):
        for key in COMPARED:
            assert ra[key] == pytest.approx(rb[key], rel=rel), f"step {ra['step']} {key}: {ra[key]} vs {rb[key]}"
    assert a[-1]["loss"] < a[0]["loss"] - 0.3  # the runs trained, so equal losses are not two untouched models
    wa, wb = load_file(got / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    for w in (wa, wb):  # ZeRO-2 also writes the tied head as its own tensor: it must be the embedding
        if "lm_head.weight" in w:
            torch.testing.assert_close(w["lm_head.weight"], w["model.embed_tokens.weight"], rtol=0, atol=0)
    assert set(wa) - {"lm_head.weight"} == set(wb) - {"lm_head.weight"}
    for k in sorted(set(wa) & set(wb)):
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def assert_zero_ran(run_dir: Path, nproc: int) -> None:
    """DeepSpeed's own checkpoint layout: one ZeRO optimizer-state partition per rank (not a silent DDP run)."""
    shards = sorted((run_dir / f"checkpoint-{STEPS}").glob("global_step*/*zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == nproc, shards
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["world_size"] == nproc and info["global_step"] == STEPS


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("method", ["sft", "eaft"])
def test_two_ranks_match_one_process(setup, method, stage):
    base = train(setup, f"{method}-1proc", 0, f"method={method}")  # 1 x 8 rows, GA 1, no DeepSpeed
    one = train(setup, f"{method}-{stage}-1proc", 1, f"method={method}", f"deepspeed={stage}")
    two = train(setup, f"{method}-{stage}-2proc", 2, f"method={method}", f"deepspeed={stage}",
                "trainer.per_device_train_batch_size=2")  # 2 ranks x 2 rows x GA 2
    assert_zero_ran(one, 1)
    assert_zero_ran(two, 2)
    assert json.loads((two / "run_info.json").read_text())["data_counts"]["kept"] == 96
    assert_same_run(one, base)  # DeepSpeed itself changes nothing
    assert_same_run(two, base)  # nor does splitting the batch over ranks and accumulation steps


def test_sft_kl_reference_model_under_zero3(setup):
    """ZeRO-3 builds the frozen reference partitioned; train.py must give it an engine that gathers its weights."""
    base = train(setup, "sft_kl-1proc", 0, "method=sft_kl")
    two = train(setup, "sft_kl-zero3-2proc", 2, "method=sft_kl", "deepspeed=zero3",
                "trainer.per_device_train_batch_size=2")
    assert_zero_ran(two, 2)
    assert_same_run(two, base)


def test_per_rank_normalisation_is_detected(setup):
    """Negative control: dividing by each rank's own token count (then averaging ranks) must fail the comparison,
    or the tests above could not tell a right normalisation from a wrong one."""
    base = train(setup, "sft-1proc", 0, "method=sft")
    wrong = train(setup, "sft-zero2-2proc-per-rank-mean", 2, "method=sft", "deepspeed=zero2",
                  "trainer.per_device_train_batch_size=2", "+trainer.average_tokens_across_devices=false")
    with pytest.raises(AssertionError):
        assert_same_run(wrong, base)
    rel = [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(steps(wrong), steps(base))]
    assert max(rel) > 1e-3, rel  # far outside the 1e-5 tolerance, not a near miss

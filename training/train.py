"""Train any method (SFT, EAFT and its variants, the baselines) with the HF Trainer.

    python -m training.train model=tiny method=eaft data=tiny trainer=tiny
    make train MODEL=qwen3-4b METHOD=eaft DATA=math
    torchrun --nproc-per-node 8 -m training.train model=qwen3-4b method=eaft deepspeed=zero3

Writes runs/<run_name>/: config.yaml (resolved), checkpoint-*/, final/ (model + tokenizer), metrics.jsonl
(one line per logging step: loss, lr, grad norm, gate statistics), run_info.json (model, method, data, seed and
profile, by which analysis identifies the run; git sha, data hash, package versions, data counts, train_loss over
the whole run). runs/<run_name> is configs/train.yaml's `run_name`, the one definition. Re-running the same command resumes from the newest
complete checkpoint (training/checkpoints.py); re-running a finished run does nothing. A run refuses a config that
differs from the one it started with, a second process on the same run directory, and a diverging loss
(training/guards.py): a run that stops on an error is never marked finished.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from eaft_loss import Objective, resolve_fused
from omegaconf import OmegaConf
from transformers import Trainer, TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from common.files import atomic_write_json, git_sha, repo_relative, sha256_file
from common.models import REPO, load_model, load_tokenizer, resolve
from training.checkpoints import CheckpointMarker, newest_verified, set_aside, step_of
from training.data import ChatCollator, build_examples, read_chat_jsonl
from training.guards import (
    Diverged,
    FiniteGuard,
    RunError,
    RunLock,
    check_trainer_keys,
    claim_config,
    finished_info,
    whole_run_train_loss,
)
from training.objective import MetricsCallback
from training.precompute import load_precomputed

PACKAGES = ["torch", "transformers", "accelerate", "datasets", "deepspeed", "hydra-core", "lm_eval", "math-verify"]


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def method_inputs(method_cfg, train_file: str, base_model_name: str) -> tuple[dict, list[float] | None]:
    """Extra hparams and per-row sample weights that a method reads from the precomputed file."""
    hparams = dict(method_cfg.get("hparams") or {})
    weights = None
    source = method_cfg.get("precomputed")  # None | "flow" | "masked_sft"
    if source:
        pre = load_precomputed(train_file, base_model_name)
        if source == "flow":
            weights = pre["flow"]["weights"]
        elif source == "masked_sft":
            from training.precompute import check_masked_sft

            check_masked_sft(pre, method_cfg, base_model_name, train_file)
            hparams["entropy_threshold"] = pre["masked_sft"]["entropy_threshold"]
            if hparams.get("mode") == "entropy_and_prob":
                hparams["prob_threshold"] = pre["masked_sft"]["prob_threshold"]
        else:
            raise ValueError(f"method.precomputed must be null, 'flow' or 'masked_sft', got {source!r}")
    return hparams, weights


def deepspeed_reference(ref_model: torch.nn.Module, args: TrainingArguments):
    """SFT-KL's frozen base model under ZeRO-3, as an inference-only DeepSpeed engine (no optimizer).

    from_pretrained built it partitioned (zero.Init), and only an engine gathers a partitioned module's parameters
    for its forward. The "auto" sizes that the Trainer fills in for the policy are set from the hidden size here,
    as TRL does for its reference models.
    """
    import copy

    import deepspeed

    config = copy.deepcopy(args.hf_deepspeed_config.config)
    hidden = ref_model.config.hidden_size
    zero = config["zero_optimization"]
    for key, value in (("reduce_bucket_size", hidden * hidden), ("stage3_param_persistence_threshold", 10 * hidden),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))):
        if zero.get(key) == "auto":
            zero[key] = value
    engine, *_ = deepspeed.initialize(model=ref_model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, unlike nn.Module.eval()
    return engine


def training_arguments(cfg, run_dir: Path) -> TrainingArguments:
    targs = OmegaConf.to_container(cfg.trainer, resolve=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.get("global_batch_size"):
        per_step = targs["per_device_train_batch_size"] * world
        if cfg.global_batch_size % per_step:
            raise ValueError(f"global_batch_size={cfg.global_batch_size} is not a multiple of "
                             f"per_device_train_batch_size x world size = {per_step}")
        targs["gradient_accumulation_steps"] = cfg.global_batch_size // per_step
    report_to = ["wandb"] if cfg.wandb.enabled else "none"
    if cfg.wandb.enabled:
        os.environ.setdefault("WANDB_MODE", cfg.wandb.mode)
        os.environ.setdefault("WANDB_PROJECT", cfg.wandb.project)
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True) if cfg.get("deepspeed") else None
    # logging_nan_inf_filter would replace a NaN loss by the running mean in the logs (and sync the device on every
    # micro-batch to do it): FiniteGuard needs to see the NaN.
    targs["logging_nan_inf_filter"] = False
    return TrainingArguments(output_dir=str(run_dir), run_name=cfg.run_name, seed=cfg.seed, report_to=report_to,
                             remove_unused_columns=False, deepspeed=ds, **targs)


def main(cfg) -> dict:
    """Train one run; see the module docstring. Refuses, before loading anything, a trainer key of the wrong type,
    a run directory another process is training, and a config that differs from the one the run started with;
    a run that already finished is a no-op."""
    run_dir = Path(resolve_out_dir(cfg.out_dir)) / cfg.run_name
    check_trainer_keys(OmegaConf.to_container(cfg.trainer, resolve=True))
    run_dir.mkdir(parents=True, exist_ok=True)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with RunLock(run_dir) if rank0 else contextlib.nullcontext():
        if rank0:
            claim_config(run_dir, cfg)
        done = finished_info(run_dir)
        if done:
            print(f"[train] {cfg.run_name} already finished at step {done.get('global_step')} "
                  f"({run_dir / 'final'}); nothing to do")
            return done
        try:
            return _train(cfg, run_dir, rank0)
        except Diverged as e:
            if rank0:
                atomic_write_json(run_dir / "run_info.json", {"run": cfg.run_name, "finished": False, "error": str(e)})
            raise


def _train(cfg, run_dir: Path, rank0: bool) -> dict:
    t0 = time.time()
    set_seed(cfg.seed)

    # TrainingArguments first: under ZeRO-3 it must exist before from_pretrained to load partitioned weights.
    args = training_arguments(cfg, run_dir)
    if args.deepspeed and "RANK" in os.environ:
        # ZeRO-3's zero.Init (inside from_pretrained) sizes partitions from deepspeed.comm. On the CPU, accelerate
        # starts only torch.distributed (gloo), so zero.Init would see a world of 1; this wraps the existing group
        # (a no-op where accelerate already started DeepSpeed's, on GPUs).
        import deepspeed

        deepspeed.init_distributed(auto_mpi_discovery=False)
    train_file = resolve(cfg.data.train_file, kind="data")
    tokenizer = load_tokenizer(cfg.model)
    hparams, weights = method_inputs(cfg.method, train_file, cfg.model.name)
    fused = resolve_fused(cfg.get("fused_loss", "auto"), cfg.method.loss)  # fails before any model loads
    examples, counts = build_examples(read_chat_jsonl(train_file), tokenizer, cfg.data.max_length,
                                      cfg.data.overlong, sample_weights=weights)
    if cfg.data.get("limit") is not None:
        examples = examples[: cfg.data.limit]
        if not examples:
            raise RunError(f"data.limit={cfg.data.limit} leaves no example to train on")
    print(f"[train] {cfg.run_name}: {counts}")

    model = load_model(cfg.model, tokenizer)
    ref_model = None
    if cfg.method.get("ref_model"):
        ref_model = load_model(cfg.model, tokenizer).eval().requires_grad_(False)
    objective = Objective(cfg.method.loss, hparams, ref_model=ref_model, fused=fused,
                          chunk_size=cfg.get("fused_chunk_size"))
    objective.attach(model)

    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=ChatCollator(tokenizer.pad_token_id), compute_loss_func=objective)
    # First in the list, so the gate statistics it adds to the logs reach wandb as well. The guard goes last:
    # it reads the save/log decisions the Trainer's own flow callback makes in on_step_end.
    trainer.callback_handler.callbacks.insert(0, MetricsCallback(run_dir / "metrics.jsonl", objective))
    guard = FiniteGuard(cfg.get("divergence_patience", 3))
    trainer.add_callback(guard)
    trainer.add_callback(CheckpointMarker())
    if ref_model is not None and is_deepspeed_zero3_enabled():
        objective.ref_model = deepspeed_reference(ref_model, args)
    elif ref_model is not None:
        ref_model.to(args.device)

    last = resume_point(run_dir, rank0) if cfg.resume else None
    start_step = checkpoint_step(last)
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    trained = trainer.state.global_step - start_step
    if trainer.state.global_step == 0:
        raise RunError(f"{cfg.run_name}: zero optimizer steps (trainer.max_steps / num_train_epochs / the data "
                       "give none); nothing is saved")
    if trained > 0 and not guard.any_gradient:
        raise RunError(f"{cfg.run_name}: every logged step had a zero gradient norm: nothing was trained (every "
                       "token masked or weighted 0 by the method?); nothing is marked finished")
    trainer.save_model(str(run_dir / "final"))
    if rank0:
        tokenizer.save_pretrained(str(run_dir / "final"))

    manifest = Path(train_file).parent / "manifest.json"
    info = {
        "run": cfg.run_name, "model": cfg.model.name, "method": cfg.method.name, "data": cfg.data.name,
        "seed": cfg.seed, "profile": cfg.get("profile"), "git_sha": git_sha(), "data_file": repo_relative(train_file),
        "data_sha256": sha256_file(train_file),
        "fused_loss": fused,
        "data_manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
        "data_counts": counts, "resumed_from": repo_relative(last) if last else None, "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "train_loss": whole_run_train_loss(run_dir / "metrics.jsonl"),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "wall_s": time.time() - t0,
        "packages": package_versions(), "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "finished": True,
    }
    if rank0:
        atomic_write_json(run_dir / "run_info.json", info)
    return info


def checkpoint_step(ckpt: Path | None) -> int:
    return step_of(ckpt) if ckpt else 0


def resume_point(run_dir: Path, rank0: bool) -> Path | None:
    """The newest complete checkpoint (training/checkpoints.py). Newer incomplete ones are named with the reason
    and, by rank 0, renamed to rejected-checkpoint-N so that nothing later trips over them."""
    last, skipped = newest_verified(run_dir)
    for ckpt, reason in skipped:
        print(f"[train] skipping {ckpt}: {reason}", flush=True)
        if rank0:
            print(f"[train]   moved to {set_aside(ckpt, reason)}", flush=True)
    print(f"[train] resuming from {last}" if last else "[train] no complete checkpoint: training from step 0",
          flush=True)
    return last


def resolve_out_dir(out_dir: str) -> str:
    p = Path(out_dir)
    return str(p if p.is_absolute() else REPO / p)


if __name__ == "__main__":
    import hydra

    hydra.main(config_path="../configs", config_name="train", version_base=None)(main)()

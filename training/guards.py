"""What stops a training run from going wrong quietly: one owner per run directory, the same config on every resume,
TrainingArguments checked before any heavy work, and a stop (not a saved model) when the loss or gradient diverges.

Used by training/train.py; nothing here needs a model. The README's "Failure modes" section says what these
guarantee and what they do not.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import socket
import typing
from pathlib import Path

from omegaconf import OmegaConf
from transformers import TrainerCallback, TrainingArguments

from common.files import atomic_write_text, read_jsonl

# Keys of the composed train config that may differ between the first start of a run and a resume, because they
# change neither the data, the model, the objective nor the optimisation. Everything else must match.
RESUMABLE_KEYS = (
    "resume", "out_dir", "wandb", "fused_chunk_size", "divergence_patience",
    "trainer.logging_steps", "trainer.save_steps", "trainer.save_total_limit", "trainer.disable_tqdm",
    "trainer.dataloader_num_workers", "trainer.dataloader_pin_memory", "trainer.gradient_checkpointing",
    "trainer.report_to",
    # metadata that names or labels the run without changing what it trains (added after runs without them)
    "run_prefix", "profile", "suite", "data.domain",
    # display names and bookkeeping that configs/method and configs/model declare (common/declarations.py)
    "method.title", "model.params",
)


class RunError(RuntimeError):
    """A run cannot start, resume or finish as asked; the message says what to change."""


class Diverged(RunError):
    pass


# ---- trainer keys, checked before tokenising or loading anything ---------------------------------------------

def check_trainer_keys(targs: dict) -> None:
    """Unknown TrainingArguments keys and values of the wrong type (`trainer.learning_rate=abc`), named by key."""
    hints = typing.get_type_hints(TrainingArguments)
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key, value in targs.items():
        if key not in names:
            raise RunError(f"trainer.{key} is not a TrainingArguments field (configs/trainer/*.yaml or an override)")
        want = hints.get(key)
        ok = {float: (int, float), int: (int,), bool: (bool,)}.get(want)
        if ok is None or value is None:
            continue
        if not isinstance(value, ok) or (want is not bool and isinstance(value, bool)):
            raise RunError(f"trainer.{key}={value!r} must be a {want.__name__}, got {type(value).__name__}")
        if want is float and not math.isfinite(value):
            raise RunError(f"trainer.{key}={value!r} must be finite")


# ---- one owner per run directory --------------------------------------------------------------------------------

class RunLock:
    """An exclusive flock on runs/<run>/.lock for the life of the training (rank 0 only). The OS releases it when
    the process dies, so a killed or requeued job never leaves a stale lock. On a file system without flock
    support it warns and goes on unlocked (say so rather than refuse every run there)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunError(f"{self.path.parent} is being trained by another process ({holder}); wait for it, "
                           "stop it, or pick another run_name") from None
        except OSError as e:
            print(f"[train] WARNING: cannot lock {self.path} ({e}); nothing stops a second process from "
                  "training this run at the same time", flush=True)
            os.close(fd)
            return self
        os.ftruncate(fd, 0)
        job = os.environ.get("SLURM_JOB_ID")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}{f', SLURM job {job}' if job else ''}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ---- the same config on every resume ----------------------------------------------------------------------------

def _flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def config_differences(stored: dict, current: dict) -> list[str]:
    """`key: stored -> current` for every key outside RESUMABLE_KEYS whose value differs."""
    a, b = dict(_flatten(stored)), dict(_flatten(current))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if not _resumable(k) and a.get(k) != b.get(k)]


def claim_config(run_dir: Path, cfg) -> None:
    """Write config.yaml on a run's first start; on every later start, refuse a config that differs from it."""
    path = Path(run_dir) / "config.yaml"
    current = OmegaConf.to_container(cfg, resolve=True)
    if path.exists():
        diffs = config_differences(OmegaConf.to_container(OmegaConf.load(path), resolve=True), current)
        if diffs:
            raise RunError(f"{path} was started with another config; this command changes:\n  " + "\n  ".join(diffs)
                           + "\nUse another run_name (or out_dir) for a new run, or delete the run directory. "
                           f"Keys that may change on resume: {', '.join(RESUMABLE_KEYS)} (training/guards.py)")
        return
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def finished_info(run_dir: Path) -> dict | None:
    """run_info.json of a run that finished (final/ saved and marked finished), else None."""
    info_path = Path(run_dir) / "run_info.json"
    if not info_path.exists() or not (Path(run_dir) / "final" / "config.json").exists():
        return None
    info = json.loads(info_path.read_text())
    return info if info.get("finished") is True else None


# ---- divergence -------------------------------------------------------------------------------------------------

class FiniteGuard(TrainerCallback):
    """Stops training when the logged loss or gradient norm is not finite for `patience` logged steps in a row, and
    never lets a checkpoint be saved from such a step.

    It reads only what the Trainer logs, so it adds no device sync: train.py turns the Trainer's
    `logging_nan_inf_filter` off (that filter synced on every micro-batch to replace a NaN loss by the running
    mean, which is what hid divergence), and a save step that is not a logging step is made one. Put it after the
    Trainer's DefaultFlowCallback, which decides `should_log` / `should_save` in on_step_end.
    `patience` > 1 only helps fp16, whose loss scaler skips overflowing steps without touching the weights.
    """

    def __init__(self, patience: int = 3):
        if patience < 1:
            raise RunError(f"divergence_patience must be >= 1, got {patience}")
        self.patience = patience
        self.bad_in_a_row = 0
        self.first_bad_step: int | None = None
        self.any_gradient = False

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return control
        values = {k: logs[k] for k in ("loss", "grad_norm") if isinstance(logs.get(k), (int, float))}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if not bad:
            self.bad_in_a_row, self.first_bad_step = 0, None
            moved = values["grad_norm"] > 0 if "grad_norm" in values else values.get("loss", 0.0) != 0
            self.any_gradient = self.any_gradient or moved
            return control
        control.should_save = False
        self.bad_in_a_row += 1
        self.first_bad_step = self.first_bad_step or state.global_step
        if self.bad_in_a_row >= self.patience:
            said = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise Diverged(f"training diverged: {said} at step {state.global_step} (non-finite since step "
                           f"{self.first_bad_step}, {self.bad_in_a_row} logged step(s) in a row; "
                           f"divergence_patience={self.patience}). No checkpoint was saved from those steps. "
                           "Lower trainer.learning_rate or check the data, and start a new run_name")
        return control


def whole_run_train_loss(metrics_path: Path) -> float | None:
    """Mean training loss over every step of the run, resumed parts included, from metrics.jsonl (each logged
    loss is the mean over the steps since the previous log, so it is weighted by that number of steps)."""
    if not Path(metrics_path).exists():
        return None
    total, steps, last = 0.0, 0, 0
    for row in read_jsonl(metrics_path):
        if "loss" in row and "step" in row:
            total += row["loss"] * (row["step"] - last)
            steps += row["step"] - last
            last = row["step"]
    return total / steps if steps else None
